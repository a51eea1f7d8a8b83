package pkcs11ha_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestEncryptGCMCallerNonce: EncryptGCM/DecryptGCM with the caller's nonce and tag size (what the PKCS#11
// front end's clients send) on in-process SoftHSM devices (CKM_AES_GCM on the token): each output is the
// Go standard library's AES-GCM with the same key, nonce, data and tag size, and decrypts back; a tampered
// input is ErrAuthentication; parameters outside the bounds are refused before any device call.
func TestEncryptGCMCallerNonce(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a", "dev-b"), SecretKeys: softhsmtest.DefaultSecretKeys()})
	cl, _ := openCluster(t, topo, "")
	ctx := context.Background()
	k, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	block, err := aes.NewCipher(topo.SecretKeys["aes-key"])
	require.NoError(t, err)
	gcm := func(nonce, tag int) cipher.AEAD {
		var g cipher.AEAD
		var err error
		if tag == 16 {
			g, err = cipher.NewGCMWithNonceSize(block, nonce)
		} else {
			require.Equal(t, 12, nonce, "crypto/cipher sets one of the two sizes only")
			g, err = cipher.NewGCMWithTagSize(block, tag)
		}
		require.NoError(t, err)
		return g
	}
	pt, aad := []byte("a plaintext of thirty-one bytes"), []byte("header")
	for _, tc := range []struct {
		name       string
		nonce, tag int // bytes
	}{{"96-bit nonce, 128-bit tag", 12, 16}, {"128-bit nonce", 16, 16}, {"8-bit nonce", 1, 16}, {"96-bit tag", 12, 12}, {"112-bit tag", 12, 14}} {
		t.Run(tc.name, func(t *testing.T) {
			nonce := bytes.Repeat([]byte{0x5a}, tc.nonce)
			var out pkcs11ha.Outcome
			ct, err := k.EncryptGCM(pkcs11ha.WithOutcome(ctx, &out), nonce, pt, aad, 8*tc.tag)
			require.NoError(t, err)
			require.NotEmpty(t, out.Device)
			g := gcm(tc.nonce, tc.tag)
			require.Equal(t, g.Seal(nil, nonce, pt, aad), ct, "the token's AES-GCM is Go's")
			got, err := k.DecryptGCM(ctx, nonce, ct, aad, 8*tc.tag)
			require.NoError(t, err)
			require.Equal(t, pt, got)
			goCT := g.Seal(nil, nonce, []byte("sealed by Go"), nil)
			got, err = k.DecryptGCM(ctx, nonce, goCT, nil, 8*tc.tag)
			require.NoError(t, err)
			require.Equal(t, "sealed by Go", string(got))

			bad := bytes.Clone(ct)
			bad[len(bad)-1] ^= 1
			_, err = k.DecryptGCM(pkcs11ha.WithOutcome(ctx, &out), nonce, bad, aad, 8*tc.tag)
			require.ErrorIs(t, err, pkcs11ha.ErrAuthentication)
			require.Equal(t, 1, out.Attempts, "a verdict on the input is not retried elsewhere")
		})
	}
	nonce := make([]byte, 12)
	for _, tc := range []struct {
		name  string
		nonce []byte
		tag   int
	}{{"no nonce", nil, 128}, {"nonce too long", make([]byte, pkcs11ha.MaxGCMNonce+1), 128}, {"64-bit tag", nonce, 64},
		{"tag of 100 bits", nonce, 100}, {"tag over 128 bits", nonce, 136}} {
		var out pkcs11ha.Outcome
		_, err := k.EncryptGCM(pkcs11ha.WithOutcome(ctx, &out), tc.nonce, pt, nil, tc.tag)
		require.ErrorAs(t, err, new(*pkcs11ha.InputError), tc.name)
		require.Zero(t, out.Attempts, tc.name)
		_, err = k.DecryptGCM(ctx, tc.nonce, pt, nil, tc.tag)
		require.ErrorAs(t, err, new(*pkcs11ha.InputError), tc.name)
	}
	_, err = k.DecryptGCM(ctx, nonce, make([]byte, 15), nil, 128)
	require.ErrorIs(t, err, pkcs11ha.ErrAuthentication, "shorter than the tag")
	hk, err := cl.SecretKey(ctx, "payments", "hmac-key")
	require.NoError(t, err)
	_, err = hk.EncryptGCM(ctx, nonce, pt, nil, 128)
	require.ErrorAs(t, err, new(*pkcs11ha.InputError), "an HMAC key does not encrypt")
	for _, st := range cl.Status() {
		require.Equal(t, "closed", st.Breaker, st.Name)
	}
}

// TestEncryptGCMFallback: over p11-kit 0.24 with policy.gcm_fallback, EncryptGCM with a 96-bit nonce and
// a 128-bit tag is Go's AES-GCM; other sizes, which the fallback does not compute, are ErrUnsupported.
func TestEncryptGCMFallback(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: softhsmtest.DefaultTopology(0)[:1], SecretKeys: softhsmtest.DefaultSecretKeys()})
	cl, _ := openCluster(t, topo, "gcm_fallback: true")
	ctx := context.Background()
	k, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	nonce := bytes.Repeat([]byte{7}, 12)
	ct, err := k.EncryptGCM(ctx, nonce, []byte("data"), []byte("aad"), 128)
	require.NoError(t, err)
	g := goGCM(t, topo.SecretKeys["aes-key"])
	require.Equal(t, g.Seal(nil, nonce, []byte("data"), []byte("aad")), ct)
	pt, err := k.DecryptGCM(ctx, nonce, ct, []byte("aad"), 128)
	require.NoError(t, err)
	require.Equal(t, "data", string(pt))
	_, err = k.EncryptGCM(ctx, make([]byte, 16), []byte("data"), nil, 128)
	require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
	_, err = k.EncryptGCM(ctx, nonce, []byte("data"), nil, 96)
	require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
}
