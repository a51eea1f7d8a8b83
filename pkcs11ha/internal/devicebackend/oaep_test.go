package devicebackend

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
)

// rawRSADecrypt is textbook RSA with the private exponent: what CKM_RSA_X_509 returns.
func rawRSADecrypt(k *rsa.PrivateKey, ct []byte) []byte {
	m := new(big.Int).Exp(new(big.Int).SetBytes(ct), k.D, k.N)
	return m.FillBytes(make([]byte, k.Size()))
}

func TestOAEPDecode(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		for _, label := range [][]byte{nil, []byte("ctx")} {
			msg := []byte("session key bytes")
			ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, &k.PublicKey, msg, label)
			require.NoError(t, err)
			opts := &rsa.OAEPOptions{Hash: h, Label: label}
			pt, err := oaepDecode(opts, k.Size(), rawRSADecrypt(k, ct))
			require.NoError(t, err, "hash %v", h)
			require.Equal(t, msg, pt)

			// Wrong label, tampered ciphertext: refused with rsa.ErrDecryption.
			_, err = oaepDecode(&rsa.OAEPOptions{Hash: h, Label: []byte("other")}, k.Size(), rawRSADecrypt(k, ct))
			require.ErrorIs(t, err, rsa.ErrDecryption)
			ct[10] ^= 1
			_, err = oaepDecode(opts, k.Size(), rawRSADecrypt(k, ct))
			require.ErrorIs(t, err, rsa.ErrDecryption)
		}
	}
}
