package devicebackend

import (
	"crypto"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall"
)

// Secret keys (CKO_SECRET_KEY) found on a token: AES keys for Seal/Open, HMAC keys for MAC. They cannot be
// compared across devices by their value, which never leaves the token, so each device computes a key
// check value (KCV) with the key and the catalogue votes on it as it votes on public keys
// (docs/ARCHITECTURE.md, "Secret keys").

// Algorithm names of secret keys.
const (
	AlgAES128     = "AES_128"
	AlgAES192     = "AES_192"
	AlgAES256     = "AES_256"
	AlgHMACSHA256 = "HMAC_SHA256"
	AlgHMACSHA384 = "HMAC_SHA384"
	AlgHMACSHA512 = "HMAC_SHA512"
)

// kcvLen is how many bytes of the check computation make the KCV: 64 bits, so that two different keys
// collide with probability 2^-64 (the 24-bit KCV of key ceremonies is for people reading it aloud).
const kcvLen = 8

// kcvBlock is what an AES key encrypts (CKM_AES_ECB) for its KCV. It is not the zero block of the usual
// convention: E_K(0) is AES-GCM's hash key, which a check value must not reveal any part of.
var kcvBlock = []byte("pkcs11ha KCV v1\x00")

// kcvMessage is what an HMAC key MACs for its KCV.
var kcvMessage = []byte("pkcs11ha key check value v1")

// HMACMechs maps an HMAC hash to its PKCS#11 mechanism.
var HMACMechs = map[crypto.Hash]uint{
	crypto.SHA256: pkcs11.CKM_SHA256_HMAC,
	crypto.SHA384: pkcs11.CKM_SHA384_HMAC,
	crypto.SHA512: pkcs11.CKM_SHA512_HMAC,
}

// SecretObject is one secret key found on one token.
type SecretObject struct {
	Label   string
	ID      []byte
	handle  pkcs11.ObjectHandle
	KeyType uint
	Size    int // CKA_VALUE_LEN, bytes
	Alg     string
	Hash    crypto.Hash // an HMAC key's hash (a generic secret's default: SHA-256); 0 for AES
	KCV     []byte
}

// secretAlg names a secret key and, for an HMAC key, its hash; ok is false for a key type this package
// does not use.
func secretAlg(keyType uint, size int) (alg string, h crypto.Hash, ok bool) {
	switch keyType {
	case pkcs11.CKK_AES:
		switch size {
		case 16:
			return AlgAES128, 0, true
		case 24:
			return AlgAES192, 0, true
		case 32:
			return AlgAES256, 0, true
		}
		return "", 0, false
	case pkcs11.CKK_GENERIC_SECRET, pkcs11.CKK_SHA256_HMAC:
		return AlgHMACSHA256, crypto.SHA256, true
	case pkcs11.CKK_SHA384_HMAC:
		return AlgHMACSHA384, crypto.SHA384, true
	case pkcs11.CKK_SHA512_HMAC:
		return AlgHMACSHA512, crypto.SHA512, true
	}
	return "", 0, false
}

// listSecretKeys enumerates the token's labelled AES and HMAC keys and computes each one's KCV on session
// s. A key whose KCV cannot be computed (it may not encrypt or sign) is left out: the cluster could
// neither check it against the other devices nor use it.
func listSecretKeys(c *pkcs11.Ctx, s pkcs11.SessionHandle, onlyLabel string) ([]*SecretObject, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}
	if onlyLabel != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, onlyLabel))
	}
	hs, err := findObjects(c, s, tmpl)
	if err != nil {
		return nil, err
	}
	var out []*SecretObject
	for _, h := range hs {
		attrs, err := c.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil),
		})
		if err != nil {
			continue // a key type without CKA_VALUE_LEN (DES...): not ours
		}
		k := &SecretObject{Label: string(attrs[0].Value), ID: attrs[1].Value, handle: h,
			KeyType: bytesToUlong(attrs[2].Value), Size: int(bytesToUlong(attrs[3].Value))}
		var ok bool
		if k.Alg, k.Hash, ok = secretAlg(k.KeyType, k.Size); !ok || k.Label == "" {
			continue
		}
		if k.KCV, err = checkValue(c, s, k); err != nil {
			continue
		}
		out = append(out, k)
	}
	return out, nil
}

// checkValue computes k's KCV on the token: the first kcvLen bytes of AES-ECB(kcvBlock) for an AES key,
// of HMAC(kcvMessage) with the key's hash for an HMAC key.
func checkValue(c *pkcs11.Ctx, s pkcs11.SessionHandle, k *SecretObject) ([]byte, error) {
	var out []byte
	var err error
	if k.Hash == 0 {
		if err = c.EncryptInit(s, plainMechs[pkcs11.CKM_AES_ECB], k.handle); err != nil {
			return nil, err
		}
		out, err = oneCall(c, s, kcvBlock, AESBlock, onecall.Encrypt, c.Encrypt)
	} else {
		if err = c.SignInit(s, plainMechs[HMACMechs[k.Hash]], k.handle); err != nil {
			return nil, err
		}
		out, err = oneCall(c, s, kcvMessage, k.Hash.Size(), onecall.Sign, c.Sign)
	}
	if err != nil {
		return nil, err
	}
	if len(out) < kcvLen {
		return nil, fmt.Errorf("check value of %d bytes", len(out))
	}
	return out[:kcvLen], nil
}
