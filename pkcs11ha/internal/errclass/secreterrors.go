package errclass

import (
	"errors"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// Errors of SecretKey's Open, VerifyMAC and DecryptCBCPad: the caller's input is refused. They are never a
// device's fault, never retried on another device and never counted on a breaker.
var (
	// ErrAuthentication: Open's input is not a ciphertext of this key with this additional data (wrong
	// key or additional data, tampered or truncated).
	ErrAuthentication = errors.New("pkcs11ha: message authentication failed")
	// ErrMACMismatch: VerifyMAC's MAC is not the key's MAC of the data.
	ErrMACMismatch = errors.New("pkcs11ha: MAC does not match")
	// ErrBadPadding: DecryptCBCPad's input does not decrypt to PKCS#7-padded data (wrong key or IV, or a
	// ciphertext altered or not made with padding). CBC is not authenticated: a ciphertext that does
	// decrypt may still have been altered (docs/encryption.md).
	ErrBadPadding = errors.New("pkcs11ha: CBC decryption: invalid padding")
)

// AuthKind is which refusal an AuthError is.
type AuthKind uint8

const (
	AuthOpen AuthKind = iota // ErrAuthentication
	AuthMAC                  // ErrMACMismatch
	AuthPad                  // ErrBadPadding
)

func (k AuthKind) sentinel() error {
	switch k {
	case AuthMAC:
		return ErrMACMismatch
	case AuthPad:
		return ErrBadPadding
	}
	return ErrAuthentication
}

// AuthError is a refusal of the caller's input: Open's (errors.Is(err, ErrAuthentication)), VerifyMAC's
// (ErrMACMismatch) or DecryptCBCPad's (ErrBadPadding), with the device that decided, if one did; its
// class is decrypt_refused.
type AuthError struct {
	Device string // "" when the input was refused before reaching a device (too short)
	Reason string
	kind   AuthKind
}

func (e *AuthError) Error() string {
	s := e.kind.sentinel().Error()
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Device != "" {
		s += " (device " + e.Device + ")"
	}
	return s
}

// Is lets errors.Is match the refusal's sentinel: ErrAuthentication, ErrMACMismatch or ErrBadPadding.
func (e *AuthError) Is(target error) bool { return target == e.kind.sentinel() }

// FailoverClass: refused, as a decrypt refused by a device is.
func (e *AuthError) FailoverClass() failover.Class { return failover.ClassRefused }

func (e *AuthError) class() Class { return ClassDecryptRefused }

// NewAuthError is an *AuthError of kind (its sentinel) for the device that decided ("" if none did).
func NewAuthError(kind AuthKind, device, reason string) *AuthError {
	return &AuthError{Device: device, Reason: reason, kind: kind}
}
