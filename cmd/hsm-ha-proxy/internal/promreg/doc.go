// Package promreg registers the sidecar's Prometheus collectors so that the HTTP API and the PKCS#11 front
// end, which may share one registry (and several servers may, in tests), share their collectors instead of
// failing on a second registration.
package promreg
