package devicebackend

import (
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall"
)

// AES-CBC-PAD on the token (secretcbc.go; docs/ARCHITECTURE.md, "Secret keys"): one C_Encrypt or
// C_Decrypt call with CKM_AES_CBC_PAD, or — when the token or its transport refuses the mechanism and
// policy.cbc_fallback is on — CBC's chaining and PKCS#7 padding in Go over AES-ECB on the token.

// cbc runs an AES-CBC-PAD encryption (Input: the plaintext; OutLen: the padded length) or decryption
// (Input: whole blocks; OutLen: their length, a buffer the plaintext always fits).
func (op *Op) cbc(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, op.Mech.CBCIV)}
	initOp, runOp := errclass.OpEncryptInit, errclass.OpEncrypt
	init, once, twice := c.EncryptInit, onecall.Encrypt, c.Encrypt
	if op.Kind == KindCBCDecrypt {
		initOp, runOp = errclass.OpDecryptInit, errclass.OpDecrypt
		init, once, twice = c.DecryptInit, onecall.Decrypt, c.Decrypt
	}
	if err := init(s, mech, h); err != nil {
		if isGCMRefusal(err) { // the same refusals: the mechanism or its parameter
			if op.CBCFallback {
				return op.cbcFromECB(c, s, h)
			}
			return nil, initOp, &errclass.MechanismError{Mechanism: "CKM_AES_CBC_PAD"}
		}
		return nil, initOp, err
	}
	out, err := oneCall(c, s, op.Input, op.OutLen, once, twice)
	return out, runOp, err
}

// cbcFallbackMaxEncrypt bounds what the fallback encrypts: it costs a round trip per block (~75 µs
// through p11-kit on the test VM), and an attempt that outlives attempt_timeout (50 ms by default) on every
// device would be counted against each — a caller's large plaintext must not be a lever on the breakers.
// 1 KiB is 65 blocks; data keys are 16 to 64 bytes. Decryption is one call at any size.
const cbcFallbackMaxEncrypt = 1024

// cbcFromECB computes AES-CBC-PAD from AES-ECB on the token. Decryption is one C_Decrypt of every block
// (P_i = D(C_i) ⊕ C_i−1), then the padding checked in constant time; encryption is one C_EncryptUpdate per
// block, since each block's input is the previous block's output (C_i = E(P_i ⊕ C_i−1)). Nothing enters
// this process that the operation's own input and output do not already give: D(C_i) and E(P_i ⊕ C_i−1)
// are the plaintext and ciphertext blocks up to an XOR with blocks the caller has.
func (op *Op) cbcFromECB(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	ecb := plainMechs[pkcs11.CKM_AES_ECB]
	iv := op.Mech.CBCIV
	if op.Kind == KindCBCEncrypt {
		if len(op.Input) > cbcFallbackMaxEncrypt {
			return nil, errclass.OpEncryptInit, &errclass.MechanismError{Mechanism: fmt.Sprintf("CKM_AES_CBC_PAD (fallback: encryption of %d bytes at most)", cbcFallbackMaxEncrypt)}
		}
		return cbcEncryptECB(c, s, h, iv, op.Input)
	}
	in := op.Input
	if err := c.DecryptInit(s, ecb, h); err != nil {
		return nil, errclass.OpDecryptInit, err
	}
	out, err := oneCall(c, s, in, len(in), onecall.Decrypt, c.Decrypt)
	if err != nil {
		return nil, errclass.OpDecrypt, err
	}
	if len(out) != len(in) {
		return nil, errclass.OpDecrypt, fmt.Errorf("AES-ECB: output of %d bytes for %d in", len(out), len(in)) // busy
	}
	subtle.XORBytes(out[:AESBlock], out[:AESBlock], iv)
	subtle.XORBytes(out[AESBlock:], out[AESBlock:], in[:len(in)-AESBlock])
	n, ok := unpadPKCS7(out)
	if !ok {
		clear(out)
		// What a token says of a bad padding, said plainly: the decrypt-refused row of the error table.
		return nil, errclass.OpDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID)
	}
	return out[:n], errclass.OpDecrypt, nil
}

// cbcEncryptECB is CBC-PAD encryption of pt under iv with AES-ECB blocks the token encrypts one by one.
func cbcEncryptECB(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle, iv, pt []byte) ([]byte, string, error) {
	n := CBCPadLen(len(pt))
	out := make([]byte, n)
	copy(out, pt)
	pad := byte(n - len(pt))
	for i := len(pt); i < n; i++ {
		out[i] = pad
	}
	if err := c.EncryptInit(s, plainMechs[pkcs11.CKM_AES_ECB], h); err != nil {
		return nil, errclass.OpEncryptInit, err
	}
	prev := iv
	for i := 0; i < n; i += AESBlock {
		blk := out[i : i+AESBlock]
		subtle.XORBytes(blk, blk, prev)
		if err := encryptBlock(c, s, blk); err != nil {
			return nil, errclass.OpEncrypt, err // a failed C_EncryptUpdate ends the operation (PKCS#11)
		}
		prev = blk
	}
	// AES-ECB has no final part; the call ends the operation, so that the session goes back to the pool idle.
	if err := encryptFinal(c, s); err != nil {
		return nil, errclass.OpEncrypt, err
	}
	return out, errclass.OpEncrypt, nil
}

// encryptBlock replaces blk (one block) with its AES-ECB encryption by the active C_EncryptUpdate
// operation: one round trip, or miekg/pkcs11's two when onecall cannot be used.
func encryptBlock(c *pkcs11.Ctx, s pkcs11.SessionHandle, blk []byte) error {
	var buf [AESBlock]byte
	got, err := onecall.EncryptUpdate(c, s, blk, buf[:])
	var out []byte
	switch {
	case err == nil:
		out = buf[:got]
	case onecall.TooSmall(err):
		if out, err = c.EncryptUpdate(s, blk); err != nil {
			return err
		}
	default:
		return err
	}
	if len(out) != AESBlock {
		return fmt.Errorf("AES-ECB: C_EncryptUpdate gave %d bytes for one block", len(out))
	}
	copy(blk, out)
	return nil
}

// encryptFinal ends an AES-ECB encryption, which has nothing left to output: one round trip into a
// buffer of one block (miekg/pkcs11's EncryptFinal asks for the size first, and its zero-length buffer
// is a size query again to p11-kit's RPC, which leaves the operation active).
func encryptFinal(c *pkcs11.Ctx, s pkcs11.SessionHandle) error {
	var buf [AESBlock]byte
	n, err := onecall.EncryptFinal(c, s, buf[:])
	if errors.Is(err, onecall.ErrLayout) {
		var rest []byte
		rest, err = c.EncryptFinal(s)
		n = len(rest)
	}
	if err == nil && n != 0 {
		err = fmt.Errorf("AES-ECB: %d bytes left at C_EncryptFinal", n)
	}
	return err
}

// unpadPKCS7 returns the length of b (whole blocks, at least one) without its PKCS#7 padding and whether
// the padding is valid, in time that does not depend on b's content: where a padding fails must not show,
// only that it does (the verdict itself is the caller's to have, docs/encryption.md).
func unpadPKCS7(b []byte) (int, bool) {
	pad := int(b[len(b)-1])
	good := subtle.ConstantTimeLessOrEq(1, pad) & subtle.ConstantTimeLessOrEq(pad, AESBlock)
	for i := 1; i <= AESBlock; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i, pad)
		same := subtle.ConstantTimeByteEq(b[len(b)-i], byte(pad))
		good &= (1 - inPad) | same
	}
	return len(b) - subtle.ConstantTimeSelect(good, pad, 0), good == 1
}

// CBCPadLen is the length of n bytes padded with PKCS#7 to whole AES blocks (1 to 16 bytes added).
func CBCPadLen(n int) int { return (n/AESBlock + 1) * AESBlock }
