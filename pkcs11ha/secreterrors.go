package pkcs11ha

import (
	"errors"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// Errors of SecretKey's Open and VerifyMAC: the caller's input does not authenticate. They are never a
// device's fault, never retried on another device and never counted on a breaker.
var (
	// ErrAuthentication: Open's input is not a ciphertext of this key with this additional data (wrong
	// key or additional data, tampered or truncated).
	ErrAuthentication = errors.New("pkcs11ha: message authentication failed")
	// ErrMACMismatch: VerifyMAC's MAC is not the key's MAC of the data.
	ErrMACMismatch = errors.New("pkcs11ha: MAC does not match")
)

// AuthError is Open's refusal (errors.Is(err, ErrAuthentication)) or VerifyMAC's (ErrMACMismatch), with
// the device that decided, if one did; its class is decrypt_refused.
type AuthError struct {
	Device string // "" when the input was refused before reaching a device (too short)
	Reason string
	mac    bool
}

func (e *AuthError) Error() string {
	s := ErrAuthentication.Error()
	if e.mac {
		s = ErrMACMismatch.Error()
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Device != "" {
		s += " (device " + e.Device + ")"
	}
	return s
}

// Is lets errors.Is match ErrAuthentication (Open) or ErrMACMismatch (VerifyMAC).
func (e *AuthError) Is(target error) bool {
	return (target == ErrAuthentication && !e.mac) || (target == ErrMACMismatch && e.mac)
}

// FailoverClass: refused, as a decrypt refused by a device is.
func (e *AuthError) FailoverClass() failover.Class { return failover.ClassRefused }

func (e *AuthError) class() Class { return ClassDecryptRefused }
