package p11front

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"encoding"
	"hash"

	"github.com/miekg/pkcs11"
)

// opPlan is what the calls of an active operation derive from its activeOp and its key: built by the
// family's plan at C_*Init, which refuses what cannot be done, and again by each later call.
type opPlan struct {
	mech     *mech   // its hash, when set, is run over the input as it comes (hash-and-sign, digests)
	obj      *object // the key; nil for a digest
	maxInput int     // otherwise the input is gathered, at most this long
	outLen   int     // the output's length (decrypt: an upper bound); with byInput, added to the input's
	byInput  bool    // the output's length is the input's plus outLen (AES-GCM, AES-CBC-PAD decryption)
	padBlock int     // the output is the input padded to whole blocks of this size (AES-CBC-PAD encryption)

	sigHash crypto.Hash      // signatures: the digest's hash (the mechanism's, or PSS's); 0 for raw RSA/ECDSA
	pss     *rsa.PSSOptions  // RSA-PSS signatures
	oaep    *rsa.OAEPOptions // RSA-OAEP encryption; nil: PKCS#1 v1.5
	secret  *secretPlan      // a secret key's mechanism (secretmech.go), done by the cluster
}

// lenFor is the output's length for input src (see outLen).
func (p *opPlan) lenFor(src []byte) int {
	if p.padBlock > 0 {
		return (len(src)/p.padBlock + 1) * p.padBlock
	}
	if p.byInput {
		return len(src) + p.outLen
	}
	return p.outLen
}

// update adds a part of the input (an Update call); an RSA operation takes one block, a raw signature
// mechanism a digest or a DigestInfo, so more is tooLong.
//
// query says the caller's output buffer was NULL (a size query, which must not consume the part) — or,
// with p11-kit 0.24, which sends a zero-length buffer the same way, a real buffer of length 0. Only
// C_EncryptUpdate and C_DecryptUpdate have one, and they never have output here, so applications do pass
// a buffer, right after the query (miekg/pkcs11 does). So a queried part is held back: the next Update
// with the same part consumes it once, anything else consumes it first. Only two identical consecutive
// parts, the first sent with no buffer, are taken for one.
func (op *activeOp) update(p *opPlan, part []byte, query bool, tooLong rv) error {
	op.Multi = true
	if op.HasHeldPart {
		held, same := op.HeldPart, bytes.Equal(op.HeldPart, part)
		op.HeldPart, op.HasHeldPart = nil, false
		if err := op.add(p, held, tooLong); err != nil || same {
			return err
		}
	}
	if query {
		op.HeldPart, op.HasHeldPart = bytes.Clone(part), true
		return nil
	}
	return op.add(p, part, tooLong)
}

// add runs part through the hash, or gathers it (bounded).
func (op *activeOp) add(p *opPlan, part []byte, tooLong rv) error {
	if p.mech.hash != 0 {
		h, err := resumeHash(p.mech.hash, op.HashState)
		if err != nil {
			return err
		}
		h.Write(part)
		op.HashState, err = h.(encoding.BinaryAppender).AppendBinary(op.HashState[:0])
		return err
	}
	if len(op.Input)+len(part) > p.maxInput {
		return rvErr(tooLong, "input too long for "+p.mech.name)
	}
	op.Input = append(op.Input, part...)
	return nil
}

// source is what the output is a function of: the single-part call's data or, for a Final call, what the
// Update calls gathered (a part held back included; for a hashing mechanism, the hash's state).
func (op *activeOp) source(p *opPlan, data []byte, final bool, tooLong rv) ([]byte, error) {
	if !final {
		return data, nil
	}
	if op.HasHeldPart {
		held := op.HeldPart
		op.HeldPart, op.HasHeldPart = nil, false
		if err := op.add(p, held, tooLong); err != nil {
			return nil, err
		}
	}
	if p.mech.hash != 0 {
		return op.HashState, nil
	}
	return op.Input, nil
}

// message is what the output is computed from: the source itself, or for a hashing mechanism its digest
// (a single-part call's data hashed, or the running hash's state summed).
func (p *opPlan) message(src []byte, final bool) ([]byte, error) {
	if p.mech.hash == 0 {
		return src, nil
	}
	state := []byte(nil)
	if final {
		state, src = src, nil
	}
	h, err := resumeHash(p.mech.hash, state)
	if err != nil {
		return nil, err
	}
	h.Write(src)
	return h.Sum(nil), nil
}

// resumeHash returns a running hash in state (nil: a fresh one). Every crypto/sha* hash marshals its state.
func resumeHash(ch crypto.Hash, state []byte) (hash.Hash, error) {
	h := ch.New()
	if state == nil {
		return h, nil
	}
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, rvErr(pkcs11.CKR_GENERAL_ERROR, "restoring a hash state: "+err.Error())
	}
	return h, nil
}
