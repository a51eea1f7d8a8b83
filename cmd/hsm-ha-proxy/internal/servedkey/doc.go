// Package servedkey is a *pkcs11ha.Key as the sidecar's two doors call it (the HTTP API, internal/proxy,
// and the PKCS#11 front end, internal/p11front): each operation also names the device that served it, for
// the access log and the answer. One adapter for both doors, over the library's pkcs11ha.Outcome.
package servedkey
