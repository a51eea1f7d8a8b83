package devicebackend

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGCMFromECBTable: the fallback's table of AES-ECB outputs, fed to crypto/cipher's GCM, gives exactly
// AES-GCM (Go's own, with the real key) for every length around block boundaries, and opens only what
// authenticates.
func TestGCMFromECBTable(t *testing.T) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	blk, err := aes.NewCipher(key)
	require.NoError(t, err)
	ref, err := cipher.NewGCM(blk)
	require.NoError(t, err)
	ecb := func(in []byte) []byte { // what the token's CKM_AES_ECB computes
		out := make([]byte, len(in))
		for i := 0; i < len(in); i += AESBlock {
			blk.Encrypt(out[i:], in[i:i+AESBlock])
		}
		return out
	}
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 100, 4096} {
		pt := make([]byte, n)
		nonce := make([]byte, GCMNonceSize)
		_, _ = rand.Read(pt)
		_, _ = rand.Read(nonce)
		aad := []byte("aad")
		in := gcmBlocks(nonce, (n+AESBlock-1)/AESBlock)
		tb := &tableBlock{in: in, out: ecb(in)}
		g, err := cipher.NewGCM(tb)
		require.NoError(t, err)
		got := g.Seal(nil, nonce, pt, aad)
		require.False(t, tb.miss, "n=%d: every block crypto/cipher asked for was in the table", n)
		require.Equal(t, ref.Seal(nil, nonce, pt, aad), got, "n=%d", n)

		tb = &tableBlock{in: in, out: ecb(in)}
		g, _ = cipher.NewGCM(tb)
		back, err := g.Open(nil, nonce, got, aad)
		require.NoError(t, err)
		require.False(t, tb.miss)
		require.Equal(t, len(pt), len(back))

		tb = &tableBlock{in: in, out: ecb(in)}
		g, _ = cipher.NewGCM(tb)
		_, err = g.Open(nil, nonce, got, []byte("aae"))
		require.Error(t, err, "wrong additional data")
	}
	// A block outside the table is a miss, never a guess.
	tb := &tableBlock{in: gcmBlocks(make([]byte, 12), 1), out: make([]byte, 48)}
	g, _ := cipher.NewGCM(tb)
	g.Seal(nil, make([]byte, 12), make([]byte, 40), nil)
	require.True(t, tb.miss)
}
