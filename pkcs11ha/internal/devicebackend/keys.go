package devicebackend

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"
)

// ckkECEdwards and ckmEdDSA are PKCS#11 3.0 constants that miekg/pkcs11 v1.1.2 predates.
const CKMEdDSA = 0x1057

const CKKECEdwards = 0x40

// Algorithm names used in status and the sidecar API.
const (
	AlgRSA2048 = "RSA_2048"
	AlgECP256  = "EC_P256"
	AlgECP384  = "EC_P384"
	AlgECP521  = "EC_P521"
	AlgEd25519 = "ED25519"
)

// KeyObject is one private key found on one token, with the public key read from its public object.
type KeyObject struct {
	Label  string
	ID     []byte
	priv   pkcs11.ObjectHandle
	Pub    crypto.PublicKey
	PubDER []byte // SubjectPublicKeyInfo, for equality across devices
	Alg    string
	// Cert is the DER of the X.509 certificate on the token that belongs to this key (certs.go), or nil;
	// CertIgnored says why certificates with its CKA_ID or label were not taken.
	Cert        []byte
	CertIgnored string
}

var (
	OIDP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	OIDP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521 = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	// Ed25519 appears either as the OID or as the printable-string curve name.
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// findObjects returns the handles matching tmpl.
func findObjects(c *pkcs11.Ctx, s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := c.FindObjectsInit(s, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		hs, _, err := c.FindObjects(s, 64)
		if err != nil {
			_ = c.FindObjectsFinal(s)
			return nil, err
		}
		out = append(out, hs...)
		if len(hs) < 64 {
			break
		}
	}
	return out, c.FindObjectsFinal(s)
}

// listPrivateKeys enumerates the token's private keys that can sign or decrypt and pairs each with its
// public object (same CKA_ID, else same label).
func listPrivateKeys(c *pkcs11.Ctx, s pkcs11.SessionHandle, onlyLabel string) ([]*KeyObject, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}
	if onlyLabel != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, onlyLabel))
	}
	hs, err := findObjects(c, s, tmpl)
	if err != nil {
		return nil, err
	}
	var out []*KeyObject
	for _, h := range hs {
		attrs, err := c.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		})
		if err != nil {
			return nil, err
		}
		k := &KeyObject{Label: string(attrs[0].Value), ID: attrs[1].Value, priv: h}
		if k.Label == "" {
			continue // unlabelled keys cannot be addressed by the API
		}
		kt := bytesToUlong(attrs[2].Value)
		if err := readPublic(c, s, k, kt); err != nil {
			return nil, fmt.Errorf("key %q: %w", k.Label, err)
		}
		out = append(out, k)
	}
	attachCertificates(c, s, out)
	return out, nil
}

// readPublic finds the public object of k and decodes it.
func readPublic(c *pkcs11.Ctx, s pkcs11.SessionHandle, k *KeyObject, keyType uint) error {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}
	if len(k.ID) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID))
	} else {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, k.Label))
	}
	hs, err := findObjects(c, s, tmpl)
	if err != nil {
		return err
	}
	switch keyType {
	case pkcs11.CKK_RSA:
		// The private object carries modulus and exponent too; use it when no public object exists.
		src := k.priv
		if len(hs) > 0 {
			src = hs[0]
		}
		a, err := c.GetAttributeValue(s, src, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return err
		}
		n := new(big.Int).SetBytes(a[0].Value)
		e := new(big.Int).SetBytes(a[1].Value)
		if !e.IsInt64() || e.Int64() > 1<<31 {
			return errors.New("RSA public exponent out of range")
		}
		k.Pub = &rsa.PublicKey{N: n, E: int(e.Int64())}
		k.Alg = fmt.Sprintf("RSA_%d", n.BitLen())
	case pkcs11.CKK_EC, CKKECEdwards:
		if len(hs) == 0 {
			return errors.New("no public key object with the same CKA_ID")
		}
		a, err := c.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return err
		}
		pub, alg, err := DecodeECPublic(keyType, a[0].Value, a[1].Value)
		if err != nil {
			return err
		}
		k.Pub, k.Alg = pub, alg
	default:
		return fmt.Errorf("unsupported key type 0x%X", keyType)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Pub)
	if err != nil {
		return err
	}
	k.PubDER = der
	return nil
}

// DecodeECPublic decodes CKA_EC_PARAMS and CKA_EC_POINT. The point is a DER OCTET STRING per the spec;
// SoftHSM returns Ed25519 points raw (32 bytes), so both are accepted.
func DecodeECPublic(keyType uint, params, point []byte) (crypto.PublicKey, string, error) {
	raw := point
	var os []byte
	if rest, err := asn1.Unmarshal(point, &os); err == nil && len(rest) == 0 {
		raw = os
	}
	if keyType == CKKECEdwards {
		if len(raw) != ed25519.PublicKeySize {
			return nil, "", fmt.Errorf("Ed25519 point has %d bytes", len(raw))
		}
		return ed25519.PublicKey(append([]byte(nil), raw...)), AlgEd25519, nil
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(params, &oid); err != nil {
		return nil, "", fmt.Errorf("EC params are not a named curve: %w", err)
	}
	var curve elliptic.Curve
	var alg string
	switch {
	case oid.Equal(OIDP256):
		curve, alg = elliptic.P256(), AlgECP256
	case oid.Equal(OIDP384):
		curve, alg = elliptic.P384(), AlgECP384
	case oid.Equal(oidP521):
		curve, alg = elliptic.P521(), AlgECP521
	case oid.Equal(oidEd25519):
		return DecodeECPublic(CKKECEdwards, nil, point)
	default:
		return nil, "", fmt.Errorf("unsupported curve %v", oid)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
	if err != nil {
		return nil, "", fmt.Errorf("EC point: %w", err)
	}
	return pub, alg, nil
}

func bytesToUlong(b []byte) uint {
	var v uint
	// Attribute values are in host byte order (little-endian on the platforms we support).
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}
