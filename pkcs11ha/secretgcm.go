package pkcs11ha

import (
	"context"
	"fmt"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// AES-GCM with the caller's nonce: what PKCS#11's C_Encrypt/C_Decrypt with CKM_AES_GCM do, for the
// sidecar's PKCS#11 front end, whose clients pass their own CK_GCM_PARAMS. Everyone else should use
// Seal/Open, which choose the nonce. Why the nonce is then the caller's to keep unique:
// docs/ARCHITECTURE.md, "Secret keys".

// Bounds of EncryptGCM's and DecryptGCM's parameters.
const (
	MaxGCMNonce   = 256 // bytes: the nonces in use are 12 bytes; this bounds what travels
	MinGCMTagBits = 96  // NIST SP 800-38D's general-purpose tag lengths: 96, 104, 112, 120, 128 bits
	MaxGCMTagBits = 128
)

// EncryptGCM encrypts plaintext with AES-GCM under the caller's nonce and returns ciphertext ‖ tag, the
// tag tagBits/8 bytes long (CKM_AES_GCM's output). Under the same key a nonce must never be used with two
// different plaintexts: that is the caller's responsibility here, which the cluster cannot check (Seal
// draws its own). A retry on another device computes the same output, so retries reuse nothing.
func (k *SecretKey) EncryptGCM(ctx context.Context, nonce, plaintext, aad []byte, tagBits int) ([]byte, error) {
	out := startOutcome(ctx)
	if err := k.checkGCM("encrypt", nonce, plaintext, aad, tagBits); err != nil {
		return nil, err
	}
	return k.encryptGCM(ctx, out, "encrypt_gcm", nonce, plaintext, aad, tagBits)
}

// DecryptGCM authenticates and decrypts ciphertext ‖ tag (EncryptGCM's output, or any AES-GCM output of
// this key) with the nonce, additional data and tag size it was made with. Input that does not
// authenticate returns an *AuthError matching ErrAuthentication, as Open's does.
func (k *SecretKey) DecryptGCM(ctx context.Context, nonce, ciphertext, aad []byte, tagBits int) ([]byte, error) {
	out := startOutcome(ctx)
	if err := k.checkGCM("decrypt", nonce, ciphertext, aad, tagBits); err != nil {
		return nil, err
	}
	if len(ciphertext) < tagBits/8 {
		return nil, errclass.NewAuthError(errclass.AuthOpen, "", fmt.Sprintf("%d bytes, shorter than the %d-bit tag", len(ciphertext), tagBits))
	}
	return k.decryptGCM(ctx, out, "decrypt_gcm", nonce, ciphertext, aad, tagBits)
}

// checkGCM refuses, before any device call, what EncryptGCM and DecryptGCM do not take.
func (k *SecretKey) checkGCM(op string, nonce, in, aad []byte, tagBits int) error {
	switch {
	case k.hash != 0:
		return errclass.InputErr("%s: key %q is %s, not AES", op, k.entry.label, k.entry.alg)
	case len(nonce) == 0 || len(nonce) > MaxGCMNonce:
		return errclass.InputErr("%s: a GCM nonce of %d bytes (1 to %d)", op, len(nonce), MaxGCMNonce)
	case tagBits < MinGCMTagBits || tagBits > MaxGCMTagBits || tagBits%8 != 0:
		return errclass.InputErr("%s: a GCM tag of %d bits (96 to 128, whole bytes)", op, tagBits)
	case len(in) > MaxSecretInput+MaxGCMTagBits/8 || len(aad) > MaxSecretInput:
		return errclass.InputErr("%s: input over %d bytes", op, MaxSecretInput)
	}
	return nil
}
