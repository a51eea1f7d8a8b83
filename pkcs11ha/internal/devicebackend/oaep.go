package devicebackend

import (
	"crypto"
	"crypto/rsa"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall"
)

// oaepDecode removes EME-OAEP padding (RFC 8017 §7.1.2 step 3) from em, the raw RSA output, in constant
// time with respect to the padding, as crypto/rsa does. Used only when policy.oaep_fallback is on and the
// token lacks native OAEP for the requested hash.
func oaepDecode(o *rsa.OAEPOptions, k int, em []byte) ([]byte, error) {
	h := o.Hash.New()
	mgfHash := o.MGFHash
	if mgfHash == 0 {
		mgfHash = o.Hash
	}
	hLen := h.Size()
	if len(em) < k {
		// Raw RSA may drop leading zero bytes.
		em = append(make([]byte, k-len(em)), em...)
	}
	if len(em) != k || k < 2*hLen+2 {
		return nil, rsa.ErrDecryption
	}
	h.Write(o.Label)
	lHash := h.Sum(nil)

	firstByteIsZero := subtle.ConstantTimeByteEq(em[0], 0)
	seed := append([]byte(nil), em[1:hLen+1]...)
	db := append([]byte(nil), em[hLen+1:]...)
	mgf1XOR(seed, mgfHash, db)
	mgf1XOR(db, mgfHash, seed)

	lHash2Good := subtle.ConstantTimeCompare(lHash, db[:hLen])

	// The remainder of the plaintext must be zero or more 0x00, followed by 0x01, followed by the message.
	var lookingForIndex, index, invalid int
	lookingForIndex = 1
	rest := db[hLen:]
	for i := 0; i < len(rest); i++ {
		equals0 := subtle.ConstantTimeByteEq(rest[i], 0)
		equals1 := subtle.ConstantTimeByteEq(rest[i], 1)
		index = subtle.ConstantTimeSelect(lookingForIndex&equals1, i, index)
		lookingForIndex = subtle.ConstantTimeSelect(equals1, 0, lookingForIndex)
		invalid = subtle.ConstantTimeSelect(lookingForIndex&^equals0, 1, invalid)
	}
	if firstByteIsZero&lHash2Good&^invalid&^lookingForIndex != 1 {
		return nil, rsa.ErrDecryption
	}
	return rest[index+1:], nil
}

// mgf1XOR XORs out with MGF1(seed) using hash h (RFC 8017 B.2.1).
func mgf1XOR(out []byte, h crypto.Hash, seed []byte) {
	var counter [4]byte
	done := 0
	for done < len(out) {
		d := h.New()
		d.Write(seed)
		d.Write(counter[:])
		block := d.Sum(nil)
		for i := 0; i < len(block) && done < len(out); i++ {
			out[done] ^= block[i]
			done++
		}
		for i := 3; i >= 0; i-- {
			counter[i]++
			if counter[i] != 0 {
				break
			}
		}
	}
}

// decrypt runs one decrypt on a session. OAEP with a hash the token lacks (SoftHSM 2.6.1 does SHA-1 only)
// is refused with a *MechanismError, or — when policy.oaep_fallback is on — done as raw RSA on the token
// with the OAEP decoding in Go.
func (op *Op) decrypt(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	oaep := op.oaepOptions()
	if oaep != nil && !oaepNativeOK(oaep) && op.OAEPFallback {
		return rawOAEP(c, s, h, op.Input, oaep, op.KeySize)
	}
	if err := c.DecryptInit(s, op.Mech.p11(), h); err != nil {
		if oaep != nil && isParamRefusal(err) {
			if op.OAEPFallback {
				return rawOAEP(c, s, h, op.Input, oaep, op.KeySize)
			}
			return nil, errclass.OpDecryptInit, &errclass.MechanismError{Mechanism: oaepName(oaep)}
		}
		return nil, errclass.OpDecryptInit, err
	}
	// The plaintext is at most the modulus size: one call into a buffer of that size.
	out, err := oneCall(c, s, op.Input, op.KeySize, onecall.Decrypt, c.Decrypt)
	if err != nil && oaep != nil && isParamRefusal(err) {
		if op.OAEPFallback {
			return rawOAEP(c, s, h, op.Input, oaep, op.KeySize)
		}
		return nil, errclass.OpDecrypt, &errclass.MechanismError{Mechanism: oaepName(oaep)}
	}
	return out, errclass.OpDecrypt, err
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
		return nil, errclass.OpDecryptInit, err
	}
	em, err := oneCall(c, s, ct, keySize, onecall.Decrypt, c.Decrypt)
	if err != nil {
		return nil, errclass.OpDecrypt, err
	}
	pt, err := oaepDecode(o, keySize, em)
	if err != nil {
		return nil, errclass.OpDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID)
	}
	return pt, errclass.OpDecrypt, nil
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
