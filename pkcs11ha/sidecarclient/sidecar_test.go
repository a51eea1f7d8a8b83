package sidecarclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// startRealSidecar builds cmd/hsm-ha-proxy, runs it on four SoftHSM devices and returns its socket; the
// process is stopped with SIGTERM (and must exit 0) when the test ends.
func startRealSidecar(t *testing.T, topo *softhsmtest.Topology) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the sidecar with")
	}
	bin := filepath.Join(t.TempDir(), "hsm-ha-proxy")
	out, err := exec.Command(goCmd, "build", "-o", bin, "github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	sockDir, err := os.MkdirTemp("", "sc")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "proxy.sock")
	cfg := filepath.Join(topo.Dir, "sidecar.yaml")
	require.NoError(t, topo.WriteConfig(cfg, softhsmtest.ConfigOptions{
		PolicyYAML:  "oaep_fallback: true\ngcm_fallback: true", // p11-kit 0.24 carries neither OAEP-SHA256 nor AES-GCM
		ServerYAML:  "listen: unix://" + sock,
		ClientsYAML: fmt.Sprintf("- {name: me, unix_uid: %d, partitions: [payments, ledger]}", os.Getuid()),
		PINStyle:    softhsmtest.PINFile,
	}))
	var stderr softhsmtest.LogBuffer
	cmd := exec.Command(bin, "serve", "--config", cfg)
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			assert.NoError(t, err, "the sidecar exits 0 on SIGTERM")
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("the sidecar did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("sidecar stderr:\n%s", stderr.String())
		}
	})
	c := Dial(sock)
	defer c.Close()
	require.Eventually(t, func() bool { ok, _ := c.Ready(context.Background()); return ok }, 30*time.Second, 20*time.Millisecond,
		"the sidecar becomes ready; stderr:\n%s", &stderr)
	return sock
}

// TestAgainstRealSidecar drives keys of the real sidecar binary through the crypto.Signer and
// crypto.Decrypter interfaces and verifies every result with the standard library.
func TestAgainstRealSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the sidecar and runs SoftHSM devices")
	}
	topo := harnesstest.Start(t, softhsmtest.Options{})
	c := Dial(startRealSidecar(t, topo))
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	msg := []byte("signed through the real sidecar")
	pss := func(h crypto.Hash, salt int) *rsa.PSSOptions { return &rsa.PSSOptions{SaltLength: salt, Hash: h} }
	for _, tc := range []struct {
		label string
		opts  crypto.SignerOpts
	}{
		{"rsa-key", crypto.SHA256}, {"rsa-key", crypto.SHA384}, {"rsa-key", crypto.SHA512},
		{"rsa-key", pss(crypto.SHA256, rsa.PSSSaltLengthEqualsHash)}, {"rsa-key", pss(crypto.SHA384, 48)},
		{"rsa-key", pss(crypto.SHA512, rsa.PSSSaltLengthEqualsHash)},
		{"ec-key", crypto.SHA256}, {"ec-key", crypto.SHA384}, {"ec-key", crypto.SHA512},
		{"ec384-key", crypto.SHA384},
	} {
		alg, err := SignAlgorithm(topo.Keys[tc.label].Public(), tc.opts)
		require.NoError(t, err)
		t.Run(tc.label+" "+alg, func(t *testing.T) {
			k, err := c.Key(ctx, "payments", tc.label)
			require.NoError(t, err)
			var signer crypto.Signer = k
			h := tc.opts.HashFunc().New()
			h.Write(msg)
			digest := h.Sum(nil)
			sig, err := signer.Sign(rand.Reader, digest, tc.opts)
			require.NoError(t, err)
			switch pub := signer.Public().(type) {
			case *rsa.PublicKey:
				if o, ok := tc.opts.(*rsa.PSSOptions); ok {
					require.NoError(t, rsa.VerifyPSS(pub, o.Hash, digest, sig, &rsa.PSSOptions{SaltLength: o.Hash.Size()}))
				} else {
					require.NoError(t, rsa.VerifyPKCS1v15(pub, tc.opts.HashFunc(), digest, sig))
				}
			case *ecdsa.PublicKey:
				require.True(t, ecdsa.VerifyASN1(pub, digest, sig))
			}
		})
	}

	rk, err := c.Key(ctx, "ledger", "rsa-key")
	require.NoError(t, err)
	var dec crypto.Decrypter = rk
	pub := dec.Public().(*rsa.PublicKey)
	secret := []byte("a 32-byte session key, honestly!")
	for _, tc := range []struct {
		name    string
		opts    crypto.DecrypterOpts
		encrypt func() ([]byte, error)
	}{
		{"OAEP SHA-1", &rsa.OAEPOptions{Hash: crypto.SHA1}, func() ([]byte, error) { return rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, secret, nil) }},
		{"OAEP SHA-256", &rsa.OAEPOptions{Hash: crypto.SHA256}, func() ([]byte, error) { return rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, secret, nil) }},
		{"PKCS#1 v1.5", nil, func() ([]byte, error) { return rsa.EncryptPKCS1v15(rand.Reader, pub, secret) }},
		{"PKCS#1 v1.5 session key", &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 32}, func() ([]byte, error) { return rsa.EncryptPKCS1v15(rand.Reader, pub, secret) }},
	} {
		t.Run("decrypt "+tc.name, func(t *testing.T) {
			ct, err := tc.encrypt()
			require.NoError(t, err)
			pt, err := dec.Decrypt(rand.Reader, ct, tc.opts)
			require.NoError(t, err)
			assert.Equal(t, secret, pt)
		})
	}

	t.Run("errors", func(t *testing.T) {
		_, err := c.Key(ctx, "payments", "no-such-key")
		var ae *APIError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, 404, ae.StatusCode)
		assert.Equal(t, sidecarapi.CodeUnknownKey, ae.Code)
		_, err = c.Keys(ctx, "treasury")
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, sidecarapi.CodeUnknownPartition, ae.Code)

		// A ciphertext whose padding is wrong: refused, and errors.Is(rsa.ErrDecryption) as in-process,
		// whether the token decodes OAEP (SHA-1) or the library's fallback does (SHA-256).
		em := make([]byte, pub.Size())
		em[1] = 0x07
		em[100] = 1
		bad := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N).FillBytes(make([]byte, pub.Size()))
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
			_, err = rk.DecryptContext(ctx, bad, &rsa.OAEPOptions{Hash: h})
			require.ErrorIs(t, err, rsa.ErrDecryption, "OAEP %v", h)
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, 400, ae.StatusCode)
		}

		expired, cancel := context.WithTimeout(ctx, -time.Second)
		defer cancel()
		_, err = rk.SignContext(expired, make([]byte, 32), crypto.SHA256)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})

	t.Run("status", func(t *testing.T) {
		st, err := c.Status(ctx)
		require.NoError(t, err)
		assert.True(t, st.Ready)
		require.Len(t, st.Devices, 4)
		for _, d := range st.Devices {
			assert.Equal(t, "up", d.State)
			assert.Equal(t, "closed", d.Breaker)
			assert.Len(t, d.Partitions, 2)
		}
	})
}
