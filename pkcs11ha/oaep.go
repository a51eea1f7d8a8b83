package pkcs11ha

import (
	"crypto"
	"crypto/rsa"
	"crypto/subtle"
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
