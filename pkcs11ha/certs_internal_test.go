package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// TestCertificateFor is the matching of one key with a token's certificates: CKA_ID first, then label,
// and only with the key's public key.
func TestCertificateFor(t *testing.T) {
	key, other := newECKey(t), newECKey(t)
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	k := &devicebackend.KeyObject{Label: "k", ID: []byte{7}, PubDER: pubDER}
	mine1, mine2 := cert(t, key, 1), cert(t, key, 2)
	theirs := cert(t, other, 3)
	tests := []struct {
		name    string
		certs   []devicebackend.CertObject
		want    []byte
		ignored string // substring of the reason; "" for none
	}{
		{"none", nil, nil, ""},
		{"unrelated", []devicebackend.CertObject{{Label: "x", Id: []byte{8}, Der: theirs}}, nil, ""},
		{"by id", []devicebackend.CertObject{{Label: "x", Id: []byte{7}, Der: mine1}}, mine1, ""},
		{"by label", []devicebackend.CertObject{{Label: "k", Id: []byte{9}, Der: mine1}}, mine1, ""},
		{"id before label", []devicebackend.CertObject{{Label: "k", Der: mine2}, {Label: "y", Id: []byte{7}, Der: mine1}}, mine1, ""},
		{"another public key", []devicebackend.CertObject{{Label: "k", Id: []byte{7}, Der: theirs}}, nil, "another public key"},
		{"not X.509", []devicebackend.CertObject{{Label: "k", Der: []byte("junk")}}, nil, "not X.509"},
		{"a bad one, then a good one", []devicebackend.CertObject{{Label: "k", Id: []byte{7}, Der: theirs}, {Label: "k", Der: mine2}}, mine2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ignored := devicebackend.CertificateFor(k, tt.certs)
			assert.Equal(t, tt.want, got)
			if tt.ignored == "" {
				assert.Empty(t, ignored)
			} else {
				assert.Contains(t, ignored, tt.ignored)
			}
		})
	}
}

// TestMajorityCert: the certificate most devices hold wins, the earliest on a tie.
func TestMajorityCert(t *testing.T) {
	a, b, c := []byte("A"), []byte("B"), []byte("C")
	tests := []struct {
		name  string
		votes [][]byte
		want  []byte
	}{
		{"none", nil, nil},
		{"one", [][]byte{b}, b},
		{"majority", [][]byte{b, a, a}, a},
		{"tie: earliest", [][]byte{c, b, b, c}, c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { assert.Equal(t, tt.want, majorityCert(tt.votes)) })
	}
}

func newECKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func cert(t *testing.T, key crypto.Signer, serial int64) []byte {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "k"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	return der
}
