package pkcs11ha_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// goCBC encrypts whole blocks with crypto/cipher's AES-CBC (no padding: the caller pads, or does not).
func goCBC(t *testing.T, key, iv, blocks []byte) []byte {
	b, err := aes.NewCipher(key)
	require.NoError(t, err)
	out := make([]byte, len(blocks))
	cipher.NewCBCEncrypter(b, iv).CryptBlocks(out, blocks)
	return out
}

// pkcs7 pads data to whole AES blocks (RFC 5652 §6.3), as CKM_AES_CBC_PAD does.
func pkcs7(data []byte) []byte {
	n := 16 - len(data)%16
	return append(bytes.Clone(data), bytes.Repeat([]byte{byte(n)}, n)...)
}

// TestCBCPad: EncryptCBCPad/DecryptCBCPad with CKM_AES_CBC_PAD on in-process SoftHSM devices (the
// mechanism on the token).
func TestCBCPad(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a", "dev-b"), SecretKeys: softhsmtest.DefaultSecretKeys()})
	cl, _ := openCluster(t, topo, "")
	checkCBCPad(t, cl, topo)
}

// TestCBCPadFallback: over p11-kit 0.24, whose RPC drops CKM_AES_CBC_PAD, EncryptCBCPad and DecryptCBCPad
// are ErrUnsupported; with policy.cbc_fallback they are computed from AES-ECB on the token, with the same
// outputs and refusals as the mechanism's (encryption up to 1 KiB).
func TestCBCPadFallback(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: softhsmtest.DefaultTopology(0)[:2], SecretKeys: softhsmtest.DefaultSecretKeys()})
	t.Run("off", func(t *testing.T) {
		cl, _ := openCluster(t, topo, "")
		ctx := context.Background()
		k, err := cl.SecretKey(ctx, "payments", "aes-key")
		require.NoError(t, err)
		iv := make([]byte, 16)
		_, err = k.EncryptCBCPad(ctx, iv, []byte("data"))
		require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
		require.ErrorContains(t, err, "cbc_fallback")
		_, err = k.DecryptCBCPad(ctx, iv, make([]byte, 16))
		require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
	})
	t.Run("on", func(t *testing.T) {
		cl, _ := openCluster(t, topo, "cbc_fallback: true")
		checkCBCPad(t, cl, topo)
		// Encryption costs a round trip per block: over 1 KiB it is refused, as the caller's (not counted).
		k, err := cl.SecretKey(context.Background(), "payments", "aes-key")
		require.NoError(t, err)
		_, err = k.EncryptCBCPad(context.Background(), make([]byte, 16), make([]byte, 1025))
		require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
		require.ErrorContains(t, err, "1024 bytes at most")
		ct, err := k.EncryptCBCPad(context.Background(), make([]byte, 16), make([]byte, 1024))
		require.NoError(t, err)
		require.Len(t, ct, 1040)
		big := bytes.Repeat([]byte("4 KiB and more. "), 300)
		pt, err := k.DecryptCBCPad(context.Background(), make([]byte, 16), goCBC(t, topo.SecretKeys["aes-key"], make([]byte, 16), pkcs7(big)))
		require.NoError(t, err, "decryption is one call at any size")
		require.True(t, bytes.Equal(big, pt))
		for _, st := range cl.Status() {
			require.Equal(t, "closed", st.Breaker, st.Name)
		}
	})
}

// checkCBCPad: each output is crypto/cipher's AES-CBC of the PKCS#7-padded input under the harness's key
// value, and decrypts back (Go's ciphertexts too); a ciphertext whose padding is not valid is
// ErrBadPadding, decided by one device in one attempt, never counted against a device, however often it
// comes; what the calls do not take is refused before any device call.
func checkCBCPad(t *testing.T, cl *pkcs11ha.Cluster, topo *softhsmtest.Topology) {
	t.Helper()
	ctx := context.Background()
	k, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	key := topo.SecretKeys["aes-key"]
	iv := make([]byte, 16)
	_, _ = rand.Read(iv)
	served := map[string]bool{}
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 100, 1000} {
		pt := make([]byte, n)
		_, _ = rand.Read(pt)
		var out pkcs11ha.Outcome
		ct, err := k.EncryptCBCPad(pkcs11ha.WithOutcome(ctx, &out), iv, pt)
		require.NoError(t, err, n)
		served[out.Device] = true
		want := goCBC(t, key, iv, pkcs7(pt))
		require.Equal(t, want, ct, "%d bytes: the token's AES-CBC-PAD is Go's AES-CBC of the PKCS#7-padded input", n)
		got, err := k.DecryptCBCPad(pkcs11ha.WithOutcome(ctx, &out), iv, ct)
		require.NoError(t, err, n)
		require.True(t, bytes.Equal(pt, got), n)
		require.NotEmpty(t, out.Device)
	}
	t.Logf("served by %v", served)

	// Paddings that are not PKCS#7: a zero last byte, one over 16, runs that break (at the first byte of a
	// whole block of padding, too).
	x := func(n int, tail ...byte) []byte { return append(bytes.Repeat([]byte{'x'}, n), tail...) }
	badPads := [][]byte{
		x(15, 0),
		x(15, 17),
		x(13, 1, 3, 3),
		x(16, append(bytes.Repeat([]byte{16}, 15), 15)...),
		x(16, append([]byte{15}, bytes.Repeat([]byte{16}, 15)...)...),
	}
	for i := 0; i < 8; i++ { // more than breaker.consecutive_failures
		bad := goCBC(t, key, iv, badPads[i%len(badPads)])
		var out pkcs11ha.Outcome
		_, err := k.DecryptCBCPad(pkcs11ha.WithOutcome(ctx, &out), iv, bad)
		require.ErrorIs(t, err, pkcs11ha.ErrBadPadding, "bad padding %d", i)
		require.NotErrorIs(t, err, pkcs11ha.ErrAuthentication)
		var ae *pkcs11ha.AuthError
		require.ErrorAs(t, err, &ae)
		require.NotEmpty(t, ae.Device, "a device decided")
		require.Equal(t, ae.Device, out.Device)
		require.Equal(t, 1, out.Attempts, "a verdict on the input is not retried elsewhere")
	}
	// A valid padding of 15 bytes under the last block is accepted: what the checks above refuse is the padding.
	okPad := append(bytes.Repeat([]byte{'y'}, 16), append([]byte{'z'}, bytes.Repeat([]byte{15}, 15)...)...)
	got, err := k.DecryptCBCPad(ctx, iv, goCBC(t, key, iv, okPad))
	require.NoError(t, err)
	require.Equal(t, string(bytes.Repeat([]byte{'y'}, 16))+"z", string(got))

	hk, err := cl.SecretKey(ctx, "payments", "hmac-key")
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		k       *pkcs11ha.SecretKey
		iv, in  []byte
		encrypt bool
	}{
		{"15-byte IV", k, iv[:15], []byte("x"), true},
		{"no IV", k, nil, make([]byte, 16), false},
		{"input over the cap", k, iv, make([]byte, pkcs11ha.MaxSecretInput+1), true},
		{"ciphertext of 15 bytes", k, iv, make([]byte, 15), false},
		{"empty ciphertext", k, iv, nil, false},
		{"ciphertext of 33 bytes", k, iv, make([]byte, 33), false},
		{"an HMAC key", hk, iv, []byte("x"), true},
	} {
		var out pkcs11ha.Outcome
		octx := pkcs11ha.WithOutcome(ctx, &out)
		if tc.encrypt {
			_, err = tc.k.EncryptCBCPad(octx, tc.iv, tc.in)
		} else {
			_, err = tc.k.DecryptCBCPad(octx, tc.iv, tc.in)
		}
		require.ErrorAs(t, err, new(*pkcs11ha.InputError), tc.name)
		require.Zero(t, out.Attempts, tc.name)
	}
	for _, st := range cl.Status() {
		require.Equal(t, "closed", st.Breaker, "%s: a bad padding is no device failure", st.Name)
		require.Equal(t, "up", st.State, st.Name)
	}
}
