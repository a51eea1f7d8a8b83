package servedkey

import (
	"context"
	"crypto"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// Key is a cluster key pair whose operations name the device that served them ("" when none did).
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

// Secret is a cluster secret key whose operations name the device that served them ("" when none did).
type Secret struct{ *pkcs11ha.SecretKey }

// SealDevice is Seal, and the device that sealed.
func (k Secret) SealDevice(ctx context.Context, plaintext, aad []byte) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	ct, err := k.Seal(pkcs11ha.WithOutcome(ctx, &out), plaintext, aad)
	return ct, out.Device, err
}

// OpenDevice is Open, and the device that opened (or refused to).
func (k Secret) OpenDevice(ctx context.Context, sealed, aad []byte) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	pt, err := k.Open(pkcs11ha.WithOutcome(ctx, &out), sealed, aad)
	return pt, out.Device, err
}

// MACDevice is MAC with hash h (0: the key's own), and the device that computed it.
func (k Secret) MACDevice(ctx context.Context, h crypto.Hash, data []byte) ([]byte, string, error) {
	sk, err := k.withHash(h)
	if err != nil {
		return nil, "", err
	}
	var out pkcs11ha.Outcome
	mac, err := sk.MAC(pkcs11ha.WithOutcome(ctx, &out), data)
	return mac, out.Device, err
}

// VerifyMACDevice is VerifyMAC with hash h (0: the key's own), and the device that computed the MAC.
func (k Secret) VerifyMACDevice(ctx context.Context, h crypto.Hash, data, mac []byte) (string, error) {
	sk, err := k.withHash(h)
	if err != nil {
		return "", err
	}
	var out pkcs11ha.Outcome
	err = sk.VerifyMAC(pkcs11ha.WithOutcome(ctx, &out), data, mac)
	return out.Device, err
}

func (k Secret) withHash(h crypto.Hash) (*pkcs11ha.SecretKey, error) {
	if h == 0 || h == k.Hash() {
		return k.SecretKey, nil
	}
	return k.WithHash(h)
}

// EncryptGCMDevice is EncryptGCM (the caller's nonce), and the device that encrypted.
func (k Secret) EncryptGCMDevice(ctx context.Context, nonce, plaintext, aad []byte, tagBits int) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	ct, err := k.EncryptGCM(pkcs11ha.WithOutcome(ctx, &out), nonce, plaintext, aad, tagBits)
	return ct, out.Device, err
}

// DecryptGCMDevice is DecryptGCM, and the device that decrypted (or refused to).
func (k Secret) DecryptGCMDevice(ctx context.Context, nonce, ciphertext, aad []byte, tagBits int) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	pt, err := k.DecryptGCM(pkcs11ha.WithOutcome(ctx, &out), nonce, ciphertext, aad, tagBits)
	return pt, out.Device, err
}

// EncryptCBCPadDevice is EncryptCBCPad (the caller's IV), and the device that encrypted.
func (k Secret) EncryptCBCPadDevice(ctx context.Context, iv, plaintext []byte) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	ct, err := k.EncryptCBCPad(pkcs11ha.WithOutcome(ctx, &out), iv, plaintext)
	return ct, out.Device, err
}

// DecryptCBCPadDevice is DecryptCBCPad, and the device that decrypted (or refused the padding).
func (k Secret) DecryptCBCPadDevice(ctx context.Context, iv, ciphertext []byte) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	pt, err := k.DecryptCBCPad(pkcs11ha.WithOutcome(ctx, &out), iv, ciphertext)
	return pt, out.Device, err
}
