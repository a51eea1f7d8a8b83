package pkcs11ha

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// decryptOn runs one decrypt on a session. OAEP with a hash the token lacks (SoftHSM 2.6.1 does SHA-1
// only) is refused with a *MechanismError, or — when policy.oaep_fallback is on — done as raw RSA on the
// token with the OAEP decoding in Go.
func decryptOn(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle, mech []*pkcs11.Mechanism,
	ct []byte, oaep *rsa.OAEPOptions, pub *rsa.PublicKey, fallback bool) ([]byte, string, error) {
	if oaep != nil && !oaepNativeOK(oaep) && fallback {
		return rawOAEP(c, s, h, ct, oaep, pub)
	}
	if err := c.DecryptInit(s, mech, h); err != nil {
		if oaep != nil && isParamRefusal(err) {
			if fallback {
				return rawOAEP(c, s, h, ct, oaep, pub)
			}
			return nil, opDecryptInit, &MechanismError{Mechanism: oaepName(oaep)}
		}
		return nil, opDecryptInit, err
	}
	out, err := c.Decrypt(s, ct)
	if err != nil && oaep != nil && isParamRefusal(err) {
		if fallback {
			return rawOAEP(c, s, h, ct, oaep, pub)
		}
		return nil, opDecrypt, &MechanismError{Mechanism: oaepName(oaep)}
	}
	return out, opDecrypt, err
}

// oaepNativeOK is true for the OAEP parameters every token does natively.
func oaepNativeOK(o *rsa.OAEPOptions) bool {
	return o.Hash == crypto.SHA1 && (o.MGFHash == 0 || o.MGFHash == crypto.SHA1) && len(o.Label) == 0
}

func isParamRefusal(err error) bool {
	var rv pkcs11.Error
	if !errors.As(err, &rv) {
		return false
	}
	switch uint(rv) {
	case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID:
		return true
	}
	return false
}

func rawOAEP(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle, ct []byte, o *rsa.OAEPOptions, pub *rsa.PublicKey) ([]byte, string, error) {
	if err := c.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil)}, h); err != nil {
		return nil, opDecryptInit, err
	}
	em, err := c.Decrypt(s, ct)
	if err != nil {
		return nil, opDecrypt, err
	}
	pt, err := oaepDecode(o, pub.Size(), em)
	if err != nil {
		return nil, opDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID)
	}
	return pt, opDecrypt, nil
}

func oaepName(o *rsa.OAEPOptions) string {
	mgf := o.MGFHash
	if mgf == 0 {
		mgf = o.Hash
	}
	s := fmt.Sprintf("CKM_RSA_PKCS_OAEP with %s and MGF1-%s", o.Hash, mgf)
	if len(o.Label) > 0 {
		s += " and a label"
	}
	return s
}

func oaepMechanism(o *rsa.OAEPOptions, pub *rsa.PublicKey) ([]*pkcs11.Mechanism, error) {
	hm, ok := hashMech[o.Hash]
	if !ok {
		return nil, inputErr("decrypt: OAEP hash %v not supported", o.Hash)
	}
	mgf := o.MGFHash
	if mgf == 0 {
		mgf = o.Hash
	}
	mm, ok := hashMech[mgf]
	if !ok {
		return nil, inputErr("decrypt: OAEP MGF1 hash %v not supported", mgf)
	}
	if pub.Size() < 2*o.Hash.Size()+2 {
		return nil, inputErr("decrypt: key too small for OAEP with %v", o.Hash)
	}
	var src uint
	if len(o.Label) > 0 {
		src = pkcs11.CKZ_DATA_SPECIFIED
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
		pkcs11.NewOAEPParams(hm.mech, mm.mgf, src, o.Label))}, nil
}
