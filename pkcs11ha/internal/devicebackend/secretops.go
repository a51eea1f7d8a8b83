package devicebackend

import (
	"bytes"
	"crypto/cipher"
	"errors"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall"
)

// AES-GCM on the token (docs/ARCHITECTURE.md, "Secret keys"). The nonce is ours (crypto/rand, chosen once
// per Seal call before routing), so that a Seal retried or hedged on another device computes the very same
// output: the same (key, nonce, plaintext, additional data) always gives the same ciphertext and tag.

const (
	GCMNonceSize = 12
	GCMTagSize   = 16
	AESBlock     = 16
)

// gcm runs a Seal (Input: the plaintext; output: ciphertext ‖ tag) or an Open (Input: ciphertext ‖ tag;
// output: the plaintext) with CKM_AES_GCM. When the token or its transport refuses the mechanism's
// parameters (p11-kit 0.24's RPC carries no CK_GCM_PARAMS) it is refused with a *MechanismError, or —
// when policy.gcm_fallback is on — computed by gcmFromECB.
func (op *Op) gcm(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	params := pkcs11.NewGCMParams(op.Mech.GCMIV, op.Mech.GCMAAD, int(op.Mech.GCMTagBits))
	// The parameters live in C memory the token may read until the operation ends.
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	initOp, runOp := errclass.OpEncryptInit, errclass.OpEncrypt
	init, once, twice := c.EncryptInit, onecall.Encrypt, c.Encrypt
	n := len(op.Input) + GCMTagSize
	if op.Kind == KindOpen {
		initOp, runOp = errclass.OpDecryptInit, errclass.OpDecrypt
		init, once, twice = c.DecryptInit, onecall.Decrypt, c.Decrypt
		// The plaintext is len-16; a buffer as long as the whole input (tag included) is never too small.
		n = len(op.Input)
	}
	if err := init(s, mech, h); err != nil {
		if isGCMRefusal(err) {
			if op.GCMFallback {
				return op.gcmFromECB(c, s, h)
			}
			return nil, initOp, &errclass.MechanismError{Mechanism: "CKM_AES_GCM"}
		}
		return nil, initOp, err
	}
	out, err := oneCall(c, s, op.Input, n, once, twice)
	return out, runOp, err
}

// isGCMRefusal: the token (or p11-kit's client, before any round trip) does not take CKM_AES_GCM with
// these parameters.
func isGCMRefusal(err error) bool {
	var rv pkcs11.Error
	return errors.As(err, &rv) && (rv == pkcs11.CKR_MECHANISM_INVALID || rv == pkcs11.CKR_MECHANISM_PARAM_INVALID)
}

// gcmFromECB computes AES-GCM in Go from the AES-ECB encryptions of the blocks GCM needs — the hash key
// block (zeros), the initial counter block J0 and the counter blocks after it — made by the token in one
// C_Encrypt call: the key stays on the token, GCM's arithmetic (GHASH, counters, the tag) is crypto/cipher's.
// The cost (docs/ARCHITECTURE.md, "Secret keys"): the GHASH key and this call's keystream are in this
// process's memory for the duration of the call.
func (op *Op) gcmFromECB(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	if len(op.Mech.GCMIV) != GCMNonceSize || op.Mech.GCMTagBits != 8*GCMTagSize {
		return nil, errclass.OpEncryptInit, &errclass.MechanismError{Mechanism: "CKM_AES_GCM (fallback: 96-bit nonce and 128-bit tag only)"}
	}
	data := len(op.Input)
	if op.Kind == KindOpen {
		data -= GCMTagSize
		if data < 0 {
			return nil, errclass.OpDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE)
		}
	}
	in := gcmBlocks(op.Mech.GCMIV, (data+AESBlock-1)/AESBlock)
	if err := c.EncryptInit(s, plainMechs[pkcs11.CKM_AES_ECB], h); err != nil {
		return nil, errclass.OpEncryptInit, err
	}
	outECB, err := oneCall(c, s, in, len(in), onecall.Encrypt, c.Encrypt)
	if err != nil {
		return nil, errclass.OpEncrypt, err
	}
	defer clear(outECB)
	tb := &tableBlock{in: in, out: outECB}
	aead, err := cipher.NewGCM(tb)
	if err != nil {
		return nil, errclass.OpEncrypt, err
	}
	if op.Kind == KindSeal {
		ct := aead.Seal(nil, op.Mech.GCMIV, op.Input, op.Mech.GCMAAD)
		if tb.miss {
			return nil, errclass.OpEncrypt, errGCMTable
		}
		return ct, errclass.OpEncrypt, nil
	}
	pt, err := aead.Open(nil, op.Mech.GCMIV, op.Input, op.Mech.GCMAAD)
	if tb.miss {
		return nil, errclass.OpDecrypt, errGCMTable
	}
	if err != nil {
		// The tag does not match: what SoftHSM's C_Decrypt says as CKR_GENERAL_ERROR, said plainly.
		return nil, errclass.OpDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID)
	}
	return pt, errclass.OpDecrypt, nil
}

var errGCMTable = errors.New("pkcs11ha: GCM fallback: crypto/cipher asked for a block the token did not encrypt")

// gcmBlocks is the input GCM encrypts with the block cipher for a 96-bit nonce and n data blocks, in the
// order crypto/cipher asks for them: the zero block (hash key), J0 = nonce ‖ 1 (tag mask), then J0+1 ...
// J0+n (keystream).
func gcmBlocks(nonce []byte, n int) []byte {
	in := make([]byte, (n+2)*AESBlock)
	var j [AESBlock]byte
	copy(j[:], nonce)
	for i := 1; i < n+2; i++ {
		ctr := uint32(i)
		j[12], j[13], j[14], j[15] = byte(ctr>>24), byte(ctr>>16), byte(ctr>>8), byte(ctr)
		copy(in[i*AESBlock:], j[:])
	}
	return in
}

// tableBlock is a cipher.Block that answers from the token's encryptions of known blocks, in order; a
// request for any other block is recorded (miss) and answered with zeros, and the result discarded.
type tableBlock struct {
	in, out []byte
	next    int
	miss    bool
}

func (b *tableBlock) BlockSize() int { return AESBlock }

func (b *tableBlock) Encrypt(dst, src []byte) {
	i := b.next * AESBlock
	if i+AESBlock > len(b.in) || !bytes.Equal(src[:AESBlock], b.in[i:i+AESBlock]) {
		b.miss = true
		clear(dst[:AESBlock])
		return
	}
	copy(dst, b.out[i:i+AESBlock])
	b.next++
}

func (b *tableBlock) Decrypt(dst, _ []byte) {
	b.miss = true
	clear(dst[:AESBlock])
}
