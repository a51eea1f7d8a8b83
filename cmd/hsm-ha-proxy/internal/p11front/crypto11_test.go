package p11front

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCrypto11Failover: a Go application using crypto11 through p11-kit-client.so keeps one context open
// and signs from 8 goroutines while one local device is killed and the other hung: not one call fails,
// every signature verifies, and the DR devices take over behind the unchanged connection.
// (crypto11 keeps one module per path and process: this is the package's only crypto11 context.)
func TestCrypto11Failover(t *testing.T) {
	d := startDevices(t)
	f := startFront(t, ClusterBackend(d.cl), fakeAuth{os.Getuid(): {"payments"}}, d.cl.Config().PartitionNames())
	c11 := configureCrypto11(t, f.socket)
	signers := map[string]crypto.Signer{}
	for label, id := range map[string]byte{"rsa-key": 1, "ec-key": 2} {
		s, err := c11.FindKeyPair([]byte{id}, nil)
		require.NoError(t, err)
		require.NotNil(t, s, label)
		signers[label] = s
	}

	var okCount, failed atomic.Int64
	errs := make(chan error, 16)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		label := []string{"rsa-key", "ec-key"}[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := signAndVerify(signers[label], d.keys[label].Public(), fmt.Sprint(w, i)); err != nil {
					failed.Add(1)
					select {
					case errs <- fmt.Errorf("%s: %w", label, err):
					default:
					}
					continue
				}
				okCount.Add(1)
			}
		}()
	}
	time.Sleep(time.Second)
	before := okCount.Load()
	require.Positive(t, before, "signing through the front end")
	d.kill(t, "eastus-1")
	time.Sleep(1500 * time.Millisecond)
	d.hang(t, "eastus-2")
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	d.heal(t, "eastus-2")
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Zero(t, failed.Load(), "failed calls")
	assert.Greater(t, okCount.Load(), before, "signatures after the local devices went away")
	assert.Contains(t, f.logs.String(), "device=westus-", "DR served behind the same connection")
	t.Logf("%d signatures, %d failed", okCount.Load(), failed.Load())
}

// configureCrypto11 opens crypto11 on the payments token through p11-kit-client.so (the PIN is accepted
// and ignored: the sidecar holds the partition's).
func configureCrypto11(t *testing.T, socket string) *crypto11.Context {
	module := clientModule(t)
	envMu.Lock()
	t.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+socket)
	c11, err := crypto11.Configure(&crypto11.Config{Path: module, TokenLabel: "payments", Pin: "not-the-partition-pin"})
	envMu.Unlock()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c11.Close()) })
	return c11
}

// signAndVerify signs a fresh digest with s and verifies it with the Go standard library.
func signAndVerify(s crypto.Signer, pub crypto.PublicKey, tag string) error {
	digest := sha256.Sum256([]byte(tag))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return err
	}
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(pk, crypto.SHA256, digest[:], sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pk, digest[:], sig) {
			return errors.New("ECDSA signature does not verify")
		}
	}
	return nil
}
