package p11front

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"os"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShutdown: when the sidecar stops, the socket goes at once, new work is refused, a signature in
// flight finishes (within the grace period) and its answer reaches the application; past the grace period
// the calls still running are cancelled and answered.
func TestShutdown(t *testing.T) {
	for _, tt := range []struct {
		name    string
		release bool // the held signature finishes within the grace period
		want    error
	}{
		{"in-flight call finishes", true, nil},
		{"grace period runs out", false, pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, ecKey, _ := softSigners(t)
			be := newFakeBackend()
			k := be.add("payments", "ec-key", []byte{2}, ecKey)
			k.block, k.started = make(chan struct{}), make(chan struct{}, 1)
			f := startFrontWith(t, be, fakeAuth{os.Getuid(): {"payments"}},
				Options{Partitions: []string{"payments"}, ShutdownGrace: 300 * time.Millisecond}, "")
			p := openClient(t, f.socket)
			s := openSession(t, p, "payments")
			s2 := openSession(t, p, "payments")
			key := findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "ec-key")
			require.NoError(t, p.SignInit(s, mechOf(pkcs11.CKM_ECDSA, nil), key))
			d := sha256.Sum256([]byte("in flight"))
			type result struct {
				sig []byte
				err error
			}
			res := make(chan result, 1)
			go func() {
				sig, err := p.Sign(s, d[:])
				res <- result{sig, err}
			}()
			<-k.started
			stopped := make(chan error, 1)
			go func() { stopped <- f.stop() }()
			require.Eventually(t, func() bool { _, err := os.Lstat(f.socket); return os.IsNotExist(err) },
				5*time.Second, 5*time.Millisecond, "the socket is removed at once")
			_, err := p.GetSessionInfo(s2)
			assert.Equal(t, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED), err, "new work is refused while draining")
			if tt.release {
				close(k.block)
			}
			r := <-res
			require.Equal(t, tt.want, r.err)
			if r.err == nil {
				require.NoError(t, verifyRaw(ecKey.Public().(*ecdsa.PublicKey), d[:], r.sig))
			}
			require.NoError(t, <-stopped)
			if !tt.release {
				assert.Contains(t, f.logs.String(), "grace period over")
			}
		})
	}
}
