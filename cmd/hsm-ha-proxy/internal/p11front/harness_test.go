package p11front

import (
	"crypto"
	"testing"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// This file is the package's only use of the SoftHSM harness (softhsm-test), so that a change of the
// harness's API touches one file.

// clientModule is the path of the stock p11-kit-client.so; the test is skipped without it.
func clientModule(t testing.TB) string {
	t.Helper()
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		t.Skipf("p11-kit client module not available: %v", err)
	}
	return tools.P11KitClient
}

// softSigners are the process-wide software test keys: RSA-2048, ECDSA P-256 and Ed25519.
func softSigners(t testing.TB) (rsaKey, ecKey, edKey crypto.Signer) {
	k := softhsmtest.NewSoftKeys(t)
	return k.RSA, k.EC, k.Ed
}
