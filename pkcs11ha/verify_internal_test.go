package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// TestVerifySignature: what the token would return (raw r||s for ECDSA) verifies, and the same with one bit
// flipped does not, for every scheme and option the library signs with.
func TestVerifySignature(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, edk, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	digest := sha256.Sum256([]byte("verify"))
	msg := []byte("an Ed25519 message")

	rawECDSA := func(d []byte) []byte {
		r, s, err := ecdsa.Sign(rand.Reader, ek, d)
		require.NoError(t, err)
		return append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	}
	pss := func(salt int) []byte {
		sig, err := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: salt})
		require.NoError(t, err)
		return sig
	}
	pkcs1, err := rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, digest[:])
	require.NoError(t, err)
	raw, err := rsa.SignPKCS1v15(rand.Reader, rk, 0, []byte("raw input"))
	require.NoError(t, err)
	maxSalt := (rk.N.BitLen()-1+7)/8 - 32 - 2

	for _, tc := range []struct {
		name   string
		pub    crypto.PublicKey
		in     []byte
		opts   crypto.SignerOpts
		sig    []byte
		scheme string
	}{
		{"RSA PKCS#1 v1.5", &rk.PublicKey, digest[:], crypto.SHA256, pkcs1, "RSA PKCS#1 v1.5"},
		{"RSA PKCS#1 v1.5 raw", &rk.PublicKey, []byte("raw input"), crypto.Hash(0), raw, "RSA PKCS#1 v1.5"},
		{"RSA-PSS salt = hash", &rk.PublicKey, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, pss(32), "RSA-PSS"},
		{"RSA-PSS salt auto", &rk.PublicKey, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}, pss(maxSalt), "RSA-PSS"},
		{"RSA-PSS salt 10", &rk.PublicKey, digest[:], &rsa.PSSOptions{SaltLength: 10, Hash: crypto.SHA256}, pss(10), "RSA-PSS"},
		{"ECDSA P-256", &ek.PublicKey, digest[:], crypto.SHA256, rawECDSA(digest[:]), "ECDSA"},
		{"Ed25519", edk.Public(), msg, crypto.Hash(0), ed25519.Sign(edk, msg), "Ed25519"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := planSign(tc.pub, tc.in, tc.opts)
			require.NoError(t, err)
			scheme, ok := verifySignature(tc.pub, tc.in, tc.opts, plan, tc.sig)
			require.Equal(t, tc.scheme, scheme)
			require.True(t, ok, "a good signature verifies")
			for _, at := range []int{0, len(tc.sig) / 2, len(tc.sig) - 1} {
				bad := append([]byte(nil), tc.sig...)
				bad[at] ^= 0x01
				_, ok := verifySignature(tc.pub, tc.in, tc.opts, plan, bad)
				require.False(t, ok, "a bit flipped at %d", at)
			}
			_, ok = verifySignature(tc.pub, tc.in, tc.opts, plan, tc.sig[:len(tc.sig)-1])
			require.False(t, ok, "a truncated signature")
		})
	}
}

func TestVerifiesByMode(t *testing.T) {
	rk := &rsa.PublicKey{}
	ek := &ecdsa.PublicKey{}
	var edk ed25519.PublicKey
	for _, tc := range []struct {
		mode           string
		rsa, ec, ed255 bool
	}{
		{VerifyRSA, true, false, false},
		{VerifyAll, true, true, true},
		{VerifyOff, false, false, false},
	} {
		require.Equal(t, tc.rsa, verifies(tc.mode, rk), tc.mode)
		require.Equal(t, tc.ec, verifies(tc.mode, ek), tc.mode)
		require.Equal(t, tc.ed255, verifies(tc.mode, edk), tc.mode)
	}
}

func TestSignatureError(t *testing.T) {
	err := error(&SignatureError{Device: "eastus-1", Partition: "payments", Key: "rsa-key", Scheme: "RSA-PSS"})
	require.ErrorIs(t, err, ErrBadSignature)
	require.Equal(t, failover.ClassFaulty, failover.ClassOf(errclass.Route(err)))
	require.True(t, failover.ClassFaulty.Retryable(), "retried on another device")
	require.True(t, failover.ClassFaulty.BreakerFailure(), "a device fault")
	require.Contains(t, err.Error(), "eastus-1")
	require.Contains(t, err.Error(), "payments")
	require.Contains(t, err.Error(), "rsa-key")
	var se *SignatureError
	require.True(t, errors.As(&failover.NoMemberError{Last: err}, &se), "reaches the caller inside ErrNoDevice when no device could sign")
}

// BenchmarkVerifySignature is the CPU cost of verify-after-sign alone, per signature (make bench's
// in-process table has it end to end: the "verify" rows).
func BenchmarkVerifySignature(b *testing.B) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(b, err)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(b, err)
	digest := sha256.Sum256([]byte("bench"))
	pkcs1, err := rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, digest[:])
	require.NoError(b, err)
	pssOpts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	pss, err := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, digest[:], pssOpts)
	require.NoError(b, err)
	r, s, err := ecdsa.Sign(rand.Reader, ek, digest[:])
	require.NoError(b, err)
	raw := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	for _, bc := range []struct {
		name string
		pub  crypto.PublicKey
		opts crypto.SignerOpts
		sig  []byte
	}{
		{"RSA-2048 PKCS1v15", &rk.PublicKey, crypto.SHA256, pkcs1},
		{"RSA-2048 PSS", &rk.PublicKey, pssOpts, pss},
		{"ECDSA P-256", &ek.PublicKey, crypto.SHA256, raw},
	} {
		plan, err := planSign(bc.pub, digest[:], bc.opts)
		require.NoError(b, err)
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, ok := verifySignature(bc.pub, digest[:], bc.opts, plan, bc.sig); !ok {
					b.Fatal("does not verify")
				}
			}
		})
	}
}
