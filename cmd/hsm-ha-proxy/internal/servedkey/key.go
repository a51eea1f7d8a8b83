package servedkey

import (
	"context"
	"crypto"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// Key is a cluster key whose operations name the device that served them ("" when none did).
type Key struct{ *pkcs11ha.Key }

// SignDevice is SignContext, and the device that signed.
func (k Key) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	sig, err := k.SignContext(pkcs11ha.WithOutcome(ctx, &out), digest, opts)
	return sig, out.Device, err
}

// DecryptDevice is DecryptContext, and the device that decrypted.
func (k Key) DecryptDevice(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	pt, err := k.DecryptContext(pkcs11ha.WithOutcome(ctx, &out), ciphertext, opts)
	return pt, out.Device, err
}
