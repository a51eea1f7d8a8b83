package pkcs11ha

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// AES-CBC with PKCS#7 padding and the caller's IV: what PKCS#11's C_Encrypt/C_Decrypt with CKM_AES_CBC_PAD
// do, for the sidecar's PKCS#11 front end, whose clients bring ciphertexts made that way. It is not
// authenticated, and a decryption service that tells a bad padding from success is a padding oracle: the
// caller's choice, served under the same reasoning as RSA PKCS#1 v1.5 decryption (docs/encryption.md;
// docs/ARCHITECTURE.md, "Secret keys"). New designs should use Seal/Open.

// CBCIVSize is the size of EncryptCBCPad's and DecryptCBCPad's IV: one AES block.
const CBCIVSize = devicebackend.AESBlock

// EncryptCBCPad encrypts plaintext with AES-CBC under iv (16 bytes), padded with PKCS#7: the output is
// len(plaintext) rounded up to the next whole block, a whole block more when it already is one. A retry
// on another device computes the same output. The IV should be unpredictable for each message (CBC's
// requirement); it is the caller's.
func (k *SecretKey) EncryptCBCPad(ctx context.Context, iv, plaintext []byte) ([]byte, error) {
	out := startOutcome(ctx)
	if err := k.checkCBC("encrypt", iv, len(plaintext) > MaxSecretInput); err != nil {
		return nil, err
	}
	want := devicebackend.CBCPadLen(len(plaintext))
	op := k.cbcOp(devicebackend.KindCBCEncrypt, iv, plaintext, want)
	return k.cl.doOn(ctx, "encrypt_cbc_pad", k.entry.mask.Load(), k.pidx, op, outputLen("C_Encrypt", want), out)
}

// DecryptCBCPad decrypts ciphertext (whole AES blocks) made with AES-CBC-PAD under this key and iv, and
// removes its padding. A ciphertext whose padding is not valid returns an *AuthError matching
// ErrBadPadding: the caller's input, decided once by one device, never tried on another, never counted
// against a device. A length that is not a positive multiple of 16 is an *InputError, before any device
// call.
func (k *SecretKey) DecryptCBCPad(ctx context.Context, iv, ciphertext []byte) ([]byte, error) {
	out := startOutcome(ctx)
	if err := k.checkCBC("decrypt", iv, len(ciphertext) > MaxSecretInput+devicebackend.AESBlock); err != nil {
		return nil, err
	}
	if len(ciphertext) == 0 || len(ciphertext)%devicebackend.AESBlock != 0 {
		return nil, errclass.InputErr("decrypt: an AES-CBC ciphertext of %d bytes (a positive multiple of %d)", len(ciphertext), devicebackend.AESBlock)
	}
	op := k.cbcOp(devicebackend.KindCBCDecrypt, iv, ciphertext, len(ciphertext))
	pt, err := k.cl.doOn(ctx, "decrypt_cbc_pad", k.entry.mask.Load(), k.pidx, op, cbcPlainLen(len(ciphertext)), out)
	if err != nil {
		return nil, refusal(err, out, errclass.AuthPad)
	}
	return pt, nil
}

// checkCBC refuses, before any device call, what EncryptCBCPad and DecryptCBCPad do not take.
func (k *SecretKey) checkCBC(op string, iv []byte, tooLong bool) error {
	switch {
	case k.hash != 0:
		return errclass.InputErr("%s: key %q is %s, not AES", op, k.entry.label, k.entry.alg)
	case len(iv) != CBCIVSize:
		return errclass.InputErr("%s: an AES-CBC IV of %d bytes (%d)", op, len(iv), CBCIVSize)
	case tooLong:
		return errclass.InputErr("%s: input over %d bytes", op, MaxSecretInput)
	}
	return nil
}

func (k *SecretKey) cbcOp(kind devicebackend.OpKind, iv, in []byte, outLen int) *devicebackend.Op {
	return &devicebackend.Op{Kind: kind, Label: k.entry.label, PubDER: k.entry.kcv, Input: in, OutLen: outLen,
		Mech: devicebackend.MechSpec{Type: pkcs11.CKM_AES_CBC_PAD, CBCIV: iv}, CBCFallback: k.cl.s.own.CBCFallback}
}

// cbcPlainLen is the check of a CBC-PAD decryption's output: n−16 to n−1 bytes for n bytes in (the padding
// is 1 to 16 bytes); a device answering another size failed that attempt (busy).
func cbcPlainLen(n int) func([]byte) error {
	return func(v []byte) error {
		if len(v) < n-devicebackend.AESBlock || len(v) >= n {
			return &DeviceError{Op: errclass.OpDecrypt, Class: ClassBusy, Err: fmt.Errorf("output of %d bytes for %d in", len(v), n)}
		}
		return nil
	}
}
