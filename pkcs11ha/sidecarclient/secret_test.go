package sidecarclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestSecretKeysAgainstRealSidecar: encrypt, decrypt, mac and verify-mac through the real sidecar binary
// and its HTTP API, every output checked with the Go standard library and the keys' real values.
func TestSecretKeysAgainstRealSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the sidecar and runs SoftHSM devices")
	}
	topo := harnesstest.Start(t, softhsmtest.Options{SecretKeys: append(softhsmtest.DefaultSecretKeys(),
		softhsmtest.SecretKeySpec{Label: "generic-key", ID: []byte{0x12}, Kind: softhsmtest.KindGeneric})})
	c := Dial(startRealSidecar(t, topo))
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	list, err := c.SecretKeys(ctx, "payments")
	require.NoError(t, err)
	require.Len(t, list, 3)
	for _, k := range list {
		assert.Len(t, k.Devices, 4, k.Label)
		assert.Len(t, k.CheckValue, 16, k.Label)
	}

	ak, err := c.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	assert.Equal(t, "AES_256", ak.Info().Algorithm)
	blk, err := aes.NewCipher(topo.SecretKeys["aes-key"])
	require.NoError(t, err)
	g, err := cipher.NewGCM(blk)
	require.NoError(t, err)
	dek := []byte("a data encryption key, 32 bytes")
	sealed, dev, err := ak.Seal(ctx, dek, []byte("secret/db"))
	require.NoError(t, err)
	assert.NotEmpty(t, dev)
	pt, err := g.Open(nil, sealed[:12], sealed[12:], []byte("secret/db"))
	require.NoError(t, err, "Go opens what the sidecar sealed")
	assert.Equal(t, dek, pt)
	pt, _, err = ak.Open(ctx, sealed, []byte("secret/db"))
	require.NoError(t, err)
	assert.Equal(t, dek, pt)
	_, _, err = ak.Open(ctx, sealed, []byte("secret/other"))
	require.ErrorIs(t, err, ErrAuthentication)
	tampered := bytes.Clone(sealed)
	tampered[20] ^= 0x80
	_, _, err = ak.Open(ctx, tampered, []byte("secret/db"))
	require.ErrorIs(t, err, ErrAuthentication)

	gk, err := c.SecretKey(ctx, "payments", "generic-key")
	require.NoError(t, err)
	data := []byte("an audit record")
	for _, tc := range []struct {
		h   crypto.Hash
		new func() func() []byte
	}{
		{crypto.SHA256, func() func() []byte {
			m := hmac.New(sha256.New, topo.SecretKeys["generic-key"])
			m.Write(data)
			return func() []byte { return m.Sum(nil) }
		}},
		{crypto.SHA512, func() func() []byte {
			m := hmac.New(sha512.New, topo.SecretKeys["generic-key"])
			m.Write(data)
			return func() []byte { return m.Sum(nil) }
		}},
	} {
		mac, _, err := gk.MAC(ctx, tc.h, data)
		require.NoError(t, err)
		assert.Equal(t, tc.new()(), mac, "%v", tc.h)
		require.NoError(t, gk.VerifyMAC(ctx, tc.h, data, mac))
		require.ErrorIs(t, gk.VerifyMAC(ctx, tc.h, []byte("an audit recorD"), mac), ErrMACMismatch)
	}

	st, err := c.Status(ctx)
	require.NoError(t, err)
	for _, d := range st.Devices {
		assert.Equal(t, "closed", d.Breaker, "%s: refused inputs are not device failures", d.Name)
	}
}
