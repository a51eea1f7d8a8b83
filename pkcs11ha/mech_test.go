package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

func TestPlanSignValidation(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	d32 := make([]byte, 32)
	d48 := make([]byte, 48)

	tests := []struct {
		name  string
		pub   crypto.PublicKey
		dig   []byte
		opts  crypto.SignerOpts
		ok    bool
		input int // expected input length when ok
	}{
		{"rsa pkcs1 sha256", &rk.PublicKey, d32, crypto.SHA256, true, 19 + 32},
		{"rsa pkcs1 wrong length", &rk.PublicKey, d48, crypto.SHA256, false, 0},
		{"rsa pkcs1 raw", &rk.PublicKey, d48, crypto.Hash(0), true, 48},
		{"rsa pkcs1 md5 unsupported", &rk.PublicKey, make([]byte, 16), crypto.MD5, false, 0},
		{"rsa pss auto", &rk.PublicKey, d32, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}, true, 32},
		{"rsa pss no hash", &rk.PublicKey, d32, &rsa.PSSOptions{}, false, 0},
		{"rsa pss salt too big", &rk.PublicKey, d32, &rsa.PSSOptions{SaltLength: 300, Hash: crypto.SHA256}, false, 0},
		{"ecdsa sha256", &ek.PublicKey, d32, crypto.SHA256, true, 32},
		{"ecdsa wrong length", &ek.PublicKey, d48, crypto.SHA256, false, 0},
		{"ecdsa with pss options", &ek.PublicKey, d32, &rsa.PSSOptions{Hash: crypto.SHA256}, false, 0},
		{"ed25519 message", edPub, []byte("hello"), crypto.Hash(0), true, 5},
		{"ed25519 with hash", edPub, d32, crypto.SHA256, false, 0},
		{"ed25519ph", edPub, make([]byte, 64), &ed25519.Options{Hash: crypto.SHA512}, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := planSign(tc.pub, tc.dig, tc.opts)
			if !tc.ok {
				require.Error(t, err)
				require.Equal(t, ClassCaller, errclass.ClassOf(err), "validation errors are caller errors")
				return
			}
			require.NoError(t, err)
			require.Len(t, p.input, tc.input)
		})
	}
}

func TestECDSADER(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	dig := sha256.Sum256([]byte("x"))
	r, s, err := ecdsa.Sign(rand.Reader, k, dig[:])
	require.NoError(t, err)
	raw := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	der, err := ecdsaDER(raw, 32)
	require.NoError(t, err)
	require.True(t, ecdsa.VerifyASN1(&k.PublicKey, dig[:], der))
	_, err = ecdsaDER(raw[:63], 32)
	require.Error(t, err, "odd raw length")
}

// TestECDSADERMatchesASN1 checks the hand-written DER against encoding/asn1 on edge values: leading zero
// octets, top bit set, zero, for every curve size.
func TestECDSADERMatchesASN1(t *testing.T) {
	for _, n := range []int{32, 48, 66} {
		for _, fill := range []func([]byte){
			func(b []byte) {},                                   // zero
			func(b []byte) { b[len(b)-1] = 1 },                  // one
			func(b []byte) { _, _ = rand.Read(b); b[0] = 0 },    // leading zero
			func(b []byte) { _, _ = rand.Read(b); b[0] = 0x80 }, // top bit set
			func(b []byte) { _, _ = rand.Read(b); b[0], b[1] = 0, 0x7f },
			func(b []byte) { _, _ = rand.Read(b) },
		} {
			raw := make([]byte, 2*n)
			fill(raw[:n])
			fill(raw[n:])
			got, err := ecdsaDER(raw, n)
			require.NoError(t, err)
			want, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
			require.NoError(t, err)
			require.Equal(t, want, got, "n=%d raw=%x", n, raw)
		}
	}
}
