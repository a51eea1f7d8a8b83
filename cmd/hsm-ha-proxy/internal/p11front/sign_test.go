package p11front

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"math/big"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRawECDSA: the hand-written DER reader gives what encoding/asn1 and big.Int give for real
// signatures (short r and s included), and refuses what strict DER or PKCS#11's fixed width refuse.
func TestRawECDSA(t *testing.T) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		require.NoError(t, err)
		coord := coordLen(&k.PublicKey)
		short := 0
		for i := range 100 {
			d := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
			der, err := ecdsa.SignASN1(rand.Reader, k, d[:])
			require.NoError(t, err)
			raw, err := rawECDSA(der, coord)
			require.NoError(t, err)
			var rs struct{ R, S *big.Int }
			_, err = asn1.Unmarshal(der, &rs)
			require.NoError(t, err)
			want := make([]byte, 2*coord)
			rs.R.FillBytes(want[:coord])
			rs.S.FillBytes(want[coord:])
			require.Equal(t, want, raw)
			require.True(t, verifyECDSA(&k.PublicKey, d[:], raw))
			if rs.R.BitLen() <= 8*(coord-1) || rs.S.BitLen() <= 8*(coord-1) {
				short++
			}
		}
		t.Logf("%s: %d of 100 signatures had a short r or s", curve.Params().Name, short)
	}

	seq := func(b ...byte) []byte { return append([]byte{0x30, byte(len(b))}, b...) }
	long := make([]byte, 0x80) // a 128-byte SEQUENCE body needs the long length form
	for _, tt := range []struct {
		name string
		der  []byte
		ok   bool
	}{
		{"minimal", seq(0x02, 0x01, 0x01, 0x02, 0x01, 0x02), true},
		{"leading zero for a high bit", seq(0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x02), true},
		{"empty", nil, false},
		{"not a sequence", []byte{0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02}, false},
		{"trailing bytes", append(seq(0x02, 0x01, 0x01, 0x02, 0x01, 0x02), 0), false},
		{"one integer", seq(0x02, 0x01, 0x01), false},
		{"three integers", seq(0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x02, 0x01, 0x03), false},
		{"negative", seq(0x02, 0x01, 0x81, 0x02, 0x01, 0x02), false},
		{"zero", seq(0x02, 0x01, 0x00, 0x02, 0x01, 0x02), false},
		{"needless leading zero", seq(0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x02), false},
		{"empty integer", seq(0x02, 0x00, 0x02, 0x01, 0x02), false},
		{"wrong tag", seq(0x04, 0x01, 0x01, 0x02, 0x01, 0x02), false},
		{"length past the end", []byte{0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02}, false},
		{"non-minimal long length", []byte{0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02}, false},
		{"long length", append([]byte{0x30, 0x81, 0x80}, long...), false}, // well formed length, no integers
		{"integer wider than the curve", seq(0x02, 0x21, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x01, 0x02), false},
	} {
		raw, err := rawECDSA(tt.der, 32)
		if !tt.ok {
			assert.Error(t, err, tt.name)
			continue
		}
		if assert.NoError(t, err, tt.name) {
			assert.Len(t, raw, 64, tt.name)
		}
	}
}
