// Package testcerts makes throw-away certificate authorities and certificates for the sidecar's mutual-TLS
// tests (the proxy package's and the command's). It is test support only: nothing in the sidecar imports it.
package testcerts
