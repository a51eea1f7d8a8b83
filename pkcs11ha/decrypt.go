package pkcs11ha

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall"
)

// decrypt runs one decrypt on a session. OAEP with a hash the token lacks (SoftHSM 2.6.1 does SHA-1 only)
// is refused with a *MechanismError, or — when policy.oaep_fallback is on — done as raw RSA on the token
// with the OAEP decoding in Go.
func (op *deviceOp) decrypt(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	oaep := op.oaepOptions()
	if oaep != nil && !oaepNativeOK(oaep) && op.OAEPFallback {
		return rawOAEP(c, s, h, op.Input, oaep, op.KeySize)
	}
	if err := c.DecryptInit(s, op.Mech.p11(), h); err != nil {
		if oaep != nil && isParamRefusal(err) {
			if op.OAEPFallback {
				return rawOAEP(c, s, h, op.Input, oaep, op.KeySize)
			}
			return nil, opDecryptInit, &MechanismError{Mechanism: oaepName(oaep)}
		}
		return nil, opDecryptInit, err
	}
	// The plaintext is at most the modulus size: one call into a buffer of that size.
	out, err := oneCall(c, s, op.Input, op.KeySize, onecall.Decrypt, c.Decrypt)
	if err != nil && oaep != nil && isParamRefusal(err) {
		if op.OAEPFallback {
			return rawOAEP(c, s, h, op.Input, oaep, op.KeySize)
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

func rawOAEP(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle, ct []byte, o *rsa.OAEPOptions, keySize int) ([]byte, string, error) {
	if err := c.DecryptInit(s, plainMechs[pkcs11.CKM_RSA_X_509], h); err != nil {
		return nil, opDecryptInit, err
	}
	em, err := oneCall(c, s, ct, keySize, onecall.Decrypt, c.Decrypt)
	if err != nil {
		return nil, opDecrypt, err
	}
	pt, err := oaepDecode(o, keySize, em)
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

func oaepMechanism(o *rsa.OAEPOptions, pub *rsa.PublicKey) (mechSpec, error) {
	hm, ok := hashMech[o.Hash]
	if !ok {
		return mechSpec{}, inputErr("decrypt: OAEP hash %v not supported", o.Hash)
	}
	mgf := o.MGFHash
	if mgf == 0 {
		mgf = o.Hash
	}
	mm, ok := hashMech[mgf]
	if !ok {
		return mechSpec{}, inputErr("decrypt: OAEP MGF1 hash %v not supported", mgf)
	}
	if pub.Size() < 2*o.Hash.Size()+2 {
		return mechSpec{}, inputErr("decrypt: key too small for OAEP with %v", o.Hash)
	}
	return mechSpec{Type: pkcs11.CKM_RSA_PKCS_OAEP, OAEPHash: hm.mech, OAEPMGF: mm.mgf, OAEPLabel: o.Label}, nil
}
