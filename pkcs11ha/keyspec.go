package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// Key algorithms that GenerateKey creates (KeySpec.Algorithm), as the CLI and the HTTP API name them.
const (
	KeyAlgRSA2048 = "rsa-2048"
	KeyAlgRSA3072 = "rsa-3072"
	KeyAlgRSA4096 = "rsa-4096"
	KeyAlgECP256  = "ec-p256"
	KeyAlgECP384  = "ec-p384"
)

// KeyAlgorithms lists the KeySpec.Algorithm values, in the order the CLI shows them.
var KeyAlgorithms = []string{KeyAlgRSA2048, KeyAlgRSA3072, KeyAlgRSA4096, KeyAlgECP256, KeyAlgECP384}

// KeySpec is a key pair to create on every device of a partition.
type KeySpec struct {
	Label     string // CKA_LABEL of both objects; required, unique in the partition
	ID        []byte // CKA_ID of both objects; default: the SHA-1 of the public key (RFC 5280 key identifier)
	Algorithm string // one of KeyAlgorithms
}

func (s *KeySpec) validate() error {
	if s.Label == "" {
		return errclass.InputErr("key label is required")
	}
	if len(s.Label) > 128 {
		return errclass.InputErr("key label has %d bytes, at most 128", len(s.Label))
	}
	if s.rsaBits() == 0 && s.curve() == nil {
		return errclass.InputErr("unknown key algorithm %q (want one of %v)", s.Algorithm, KeyAlgorithms)
	}
	return nil
}

func (s *KeySpec) rsaBits() int {
	switch s.Algorithm {
	case KeyAlgRSA2048:
		return 2048
	case KeyAlgRSA3072:
		return 3072
	case KeyAlgRSA4096:
		return 4096
	}
	return 0
}

func (s *KeySpec) curve() elliptic.Curve {
	switch s.Algorithm {
	case KeyAlgECP256:
		return elliptic.P256()
	case KeyAlgECP384:
		return elliptic.P384()
	}
	return nil
}

// curveOID is the DER of a named curve's OID (CKA_EC_PARAMS).
func curveOID(c elliptic.Curve) []byte {
	oid := devicebackend.OIDP256
	if c == elliptic.P384() {
		oid = devicebackend.OIDP384
	}
	b, _ := asn1.Marshal(oid)
	return b
}

func (s *KeySpec) mechanism() uint {
	if s.rsaBits() > 0 {
		return pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
	}
	return pkcs11.CKM_EC_KEY_PAIR_GEN
}

func (s *KeySpec) keyType() uint {
	if s.rsaBits() > 0 {
		return pkcs11.CKK_RSA
	}
	return pkcs11.CKK_EC
}

// templates are the public and private templates of C_GenerateKeyPair. wrappable keys may leave the
// device only wrapped under a trusted key (CKA_WRAP_WITH_TRUSTED), the rule of key_replication wrap; the
// others never leave it.
func (s *KeySpec) templates(wrappable bool) (pub, priv []devicebackend.Attr) {
	pub = []devicebackend.Attr{devicebackend.AttrBool(pkcs11.CKA_TOKEN, true), devicebackend.AttrString(pkcs11.CKA_LABEL, s.Label), devicebackend.AttrBytes(pkcs11.CKA_ID, s.ID),
		devicebackend.AttrBool(pkcs11.CKA_VERIFY, true)}
	priv = privateAttrs(s.Label, s.ID, s.keyType(), wrappable)
	if bits := s.rsaBits(); bits > 0 {
		pub = append(pub, devicebackend.AttrUlong(pkcs11.CKA_MODULUS_BITS, uint(bits)), devicebackend.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			devicebackend.AttrBool(pkcs11.CKA_ENCRYPT, true))
	} else {
		pub = append(pub, devicebackend.AttrBytes(pkcs11.CKA_EC_PARAMS, curveOID(s.curve())))
	}
	return pub, priv
}

// privateAttrs are the attributes every private key the cluster makes carries, however it is made
// (generated, imported, unwrapped): sensitive, signing (and decrypting for RSA), extractable only when
// wrappable, and then only under a trusted key.
func privateAttrs(label string, id []byte, keyType uint, wrappable bool) []devicebackend.Attr {
	a := []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), devicebackend.AttrUlong(pkcs11.CKA_KEY_TYPE, keyType),
		devicebackend.AttrBool(pkcs11.CKA_TOKEN, true), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, true), devicebackend.AttrBool(pkcs11.CKA_SENSITIVE, true),
		devicebackend.AttrBool(pkcs11.CKA_EXTRACTABLE, wrappable), devicebackend.AttrString(pkcs11.CKA_LABEL, label), devicebackend.AttrBytes(pkcs11.CKA_ID, id),
		devicebackend.AttrBool(pkcs11.CKA_SIGN, true)}
	if wrappable {
		a = append(a, devicebackend.AttrBool(pkcs11.CKA_WRAP_WITH_TRUSTED, true))
	}
	if keyType == pkcs11.CKK_RSA {
		a = append(a, devicebackend.AttrBool(pkcs11.CKA_DECRYPT, true))
	}
	return a
}

// publicAttrs is the public-key object of pub (C_CreateObject).
func publicAttrs(label string, id []byte, pub crypto.PublicKey) ([]devicebackend.Attr, error) {
	a := []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), devicebackend.AttrBool(pkcs11.CKA_TOKEN, true),
		devicebackend.AttrString(pkcs11.CKA_LABEL, label), devicebackend.AttrBytes(pkcs11.CKA_ID, id), devicebackend.AttrBool(pkcs11.CKA_VERIFY, true)}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return append(a, devicebackend.AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA), devicebackend.AttrBytes(pkcs11.CKA_MODULUS, k.N.Bytes()),
			devicebackend.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(k.E)).Bytes()), devicebackend.AttrBool(pkcs11.CKA_ENCRYPT, true)), nil
	case *ecdsa.PublicKey:
		point, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		os, _ := asn1.Marshal(point)
		return append(a, devicebackend.AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), devicebackend.AttrBytes(pkcs11.CKA_EC_PARAMS, curveOID(k.Curve)),
			devicebackend.AttrBytes(pkcs11.CKA_EC_POINT, os)), nil
	}
	return nil, errclass.InputErr("unsupported public key %T", pub)
}

// importAttrs is the private-key object of key (C_CreateObject) with its secret components; the caller
// wipes the values after use (wipeAttrs).
func importAttrs(label string, id []byte, key crypto.Signer, wrappable bool) ([]devicebackend.Attr, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if len(k.Primes) != 2 {
			return nil, errclass.InputErr("RSA keys with %d primes are not supported", len(k.Primes))
		}
		k.Precompute()
		a := privateAttrs(label, id, pkcs11.CKK_RSA, wrappable)
		return append(a, devicebackend.AttrBytes(pkcs11.CKA_MODULUS, k.N.Bytes()), devicebackend.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(k.E)).Bytes()),
			devicebackend.AttrBytes(pkcs11.CKA_PRIVATE_EXPONENT, k.D.Bytes()), devicebackend.AttrBytes(pkcs11.CKA_PRIME_1, k.Primes[0].Bytes()),
			devicebackend.AttrBytes(pkcs11.CKA_PRIME_2, k.Primes[1].Bytes()), devicebackend.AttrBytes(pkcs11.CKA_EXPONENT_1, k.Precomputed.Dp.Bytes()),
			devicebackend.AttrBytes(pkcs11.CKA_EXPONENT_2, k.Precomputed.Dq.Bytes()), devicebackend.AttrBytes(pkcs11.CKA_COEFFICIENT, k.Precomputed.Qinv.Bytes())), nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errclass.InputErr("EC keys on %s are not supported (P-256, P-384)", k.Curve.Params().Name)
		}
		d, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		a := privateAttrs(label, id, pkcs11.CKK_EC, wrappable)
		return append(a, devicebackend.AttrBytes(pkcs11.CKA_EC_PARAMS, curveOID(k.Curve)), devicebackend.AttrBytes(pkcs11.CKA_VALUE, d)), nil
	}
	return nil, errclass.InputErr("unsupported private key %T (RSA or EC P-256/P-384)", key)
}

// wipeAttrs overwrites the secret values of a template that held key material. Go cannot promise that
// no other copy exists (big.Int arithmetic, the garbage collector); this bounds what stays in memory.
func wipeAttrs(as []devicebackend.Attr) {
	for _, a := range as {
		switch a.Type {
		case pkcs11.CKA_VALUE, pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_PRIME_1, pkcs11.CKA_PRIME_2,
			pkcs11.CKA_EXPONENT_1, pkcs11.CKA_EXPONENT_2, pkcs11.CKA_COEFFICIENT:
			clear(a.Value)
		}
	}
}

// wipeKey overwrites the secret parts of a private key in memory (best effort, as wipeAttrs).
func wipeKey(key crypto.Signer) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		clear(k.D.Bits())
		for _, p := range k.Primes {
			clear(p.Bits())
		}
		if k.Precomputed.Dp != nil {
			clear(k.Precomputed.Dp.Bits())
			clear(k.Precomputed.Dq.Bits())
			clear(k.Precomputed.Qinv.Bits())
		}
	case *ecdsa.PrivateKey:
		if k.D != nil { //nolint:staticcheck // the deprecated field is the one holding the scalar
			clear(k.D.Bits()) //nolint:staticcheck
		}
	}
}

// Fingerprint is the hex SHA-256 of a public key's SubjectPublicKeyInfo DER: how the cluster tells keys
// apart across devices, in tombstones and in reports.
func Fingerprint(pubDER []byte) string {
	h := sha256.Sum256(pubDER)
	return hex.EncodeToString(h[:])
}

// keyIdentifier is the RFC 5280 (4.2.1.2, method 1) key identifier of a public key: the SHA-1 of its
// subjectPublicKey bits — the common default for CKA_ID.
func keyIdentifier(pubDER []byte) []byte {
	var spki struct {
		Algorithm asn1.RawValue
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(pubDER, &spki); err != nil {
		h := sha1.Sum(pubDER)
		return h[:]
	}
	h := sha1.Sum(spki.Key.Bytes)
	return h[:]
}

// publicFromAttrs decodes the public key of an object read with pubReads.
func publicFromAttrs(obj []devicebackend.Attr) (crypto.PublicKey, []byte, string, error) {
	var pub crypto.PublicKey
	var alg string
	switch kt := devicebackend.UlongOf(devicebackend.Value(obj, pkcs11.CKA_KEY_TYPE)); kt {
	case pkcs11.CKK_RSA:
		n, e := devicebackend.Value(obj, pkcs11.CKA_MODULUS), new(big.Int).SetBytes(devicebackend.Value(obj, pkcs11.CKA_PUBLIC_EXPONENT))
		if len(n) == 0 || !e.IsInt64() || e.Int64() > 1<<31 {
			return nil, nil, "", fmt.Errorf("RSA public key unreadable")
		}
		k := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(e.Int64())}
		pub, alg = k, fmt.Sprintf("RSA_%d", k.N.BitLen())
	case pkcs11.CKK_EC, devicebackend.CKKECEdwards:
		var err error
		if pub, alg, err = devicebackend.DecodeECPublic(kt, devicebackend.Value(obj, pkcs11.CKA_EC_PARAMS), devicebackend.Value(obj, pkcs11.CKA_EC_POINT)); err != nil {
			return nil, nil, "", err
		}
	default:
		return nil, nil, "", fmt.Errorf("unsupported key type 0x%X", kt)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	return pub, der, alg, err
}

// pubReads are the attributes publicFromAttrs needs.
var pubReads = []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT,
	pkcs11.CKA_EC_PARAMS, pkcs11.CKA_EC_POINT}
