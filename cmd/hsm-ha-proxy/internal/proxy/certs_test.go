package proxy

import "github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/testcerts"

// Short names for the shared mutual-TLS test certificates.
type testCA = testcerts.CA

var (
	newCA     = testcerts.NewCA
	clientTLS = testcerts.ClientTLS
	uriSAN    = testcerts.URISAN
	dnsSAN    = testcerts.DNSSAN
)
