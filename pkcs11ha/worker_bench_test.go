package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"testing"

	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// BenchmarkIsolation signs ECDSA P-256 on one in-process SoftHSM device with the module in this process
// and in a device worker: the difference is the worker hop (make bench has the same rows side by side
// with direct miekg/pkcs11).
func BenchmarkIsolation(b *testing.B) {
	for _, iso := range []string{"none", "process"} {
		b.Run(iso, func(b *testing.B) {
			topo := harnesstest.Start(b, softhsmtest.Options{Devices: inProcess("dev-a")})
			cl, _ := openCluster(b, topo, "isolation: "+iso)
			k, err := cl.Key(context.Background(), "ledger", "ec-key")
			require.NoError(b, err)
			d := sha256.Sum256([]byte("bench"))
			b.ResetTimer()
			for b.Loop() {
				if _, err := k.Sign(nil, d[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
