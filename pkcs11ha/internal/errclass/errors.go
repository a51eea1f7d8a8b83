package errclass

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// CKRName returns the symbolic name of a PKCS#11 return value, e.g. "CKR_DEVICE_ERROR".
func CKRName(rv uint) string {
	s := pkcs11.Error(rv).Error() // "pkcs11: 0x30: CKR_DEVICE_ERROR"
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR_0x%X", rv)
}

// DeviceError is a PKCS#11 failure on one device. Callers branch on Class (or errors.Is with the
// sentinels below); the PIN never appears in it.
type DeviceError struct {
	Device    string
	Partition string
	Op        string // the PKCS#11 function, e.g. "C_Sign"
	Code      uint   // CKR_* value; 0 for our own failures (timeouts, token not found)
	Class     Class
	Err       error // underlying error, if any
}

func (e *DeviceError) Error() string {
	var b strings.Builder
	b.WriteString("pkcs11ha: device ")
	b.WriteString(e.Device)
	if e.Partition != "" {
		b.WriteString(" partition ")
		b.WriteString(e.Partition)
	}
	b.WriteString(": ")
	b.WriteString(e.Op)
	if e.Code != 0 {
		fmt.Fprintf(&b, ": %s (0x%X)", CKRName(e.Code), e.Code)
	}
	if e.Err != nil && e.Code == 0 {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	fmt.Fprintf(&b, " [%s]", e.Class)
	return b.String()
}

func (e *DeviceError) class() Class { return e.Class }

// Unwrap returns the underlying error.
func (e *DeviceError) Unwrap() error { return e.Err }

// Is maps classes to the package sentinels so callers can use errors.Is.
func (e *DeviceError) Is(target error) bool {
	switch target {
	case ErrPIN:
		return e.Class == ClassCredential
	case ErrDeviceDown:
		return e.Class == ClassDeviceDown
	case rsa.ErrDecryption:
		return e.Class == ClassDecryptRefused
	}
	return false
}

// Sentinel errors callers branch on.
var (
	ErrUnknownPartition = errors.New("pkcs11ha: unknown partition")
	ErrUnknownKey       = errors.New("pkcs11ha: unknown key")
	ErrNoDevice         = errors.New("pkcs11ha: no device can serve")
	ErrPIN              = errors.New("pkcs11ha: PIN rejected by the token (not retried)")
	ErrDeviceDown       = errors.New("pkcs11ha: device down")
	ErrClosed           = errors.New("pkcs11ha: cluster closed")
	ErrUnsupported      = errors.New("pkcs11ha: not supported")
)

// InputError is a caller mistake caught before any HSM call (wrong digest length, wrong options).
type InputError struct{ Msg string }

func (e *InputError) Error() string { return "pkcs11ha: " + e.Msg }

func (e *InputError) class() Class { return ClassCaller }

// MechanismError says the token cannot do what was asked (e.g. RSA-OAEP with SHA-256 on SoftHSM 2.6.1).
type MechanismError struct {
	Device    string
	Mechanism string
}

func (e *MechanismError) Error() string {
	hint := " (set policy.oaep_fallback to decode OAEP in Go)"
	switch {
	case strings.Contains(e.Mechanism, "(fallback"):
		hint = "" // the fallback's own limit, said in Mechanism
	case strings.HasPrefix(e.Mechanism, "CKM_AES_GCM"):
		hint = " (policy.gcm_fallback computes it from AES-ECB)"
	case strings.HasPrefix(e.Mechanism, "CKM_AES_CBC_PAD"):
		hint = " (policy.cbc_fallback computes it from AES-ECB)"
	}
	return fmt.Sprintf("pkcs11ha: device %s does not support %s%s", e.Device, e.Mechanism, hint)
}

func (e *MechanismError) class() Class { return ClassCaller }

// Is lets errors.Is(err, ErrUnsupported) match.
func (e *MechanismError) Is(target error) bool { return target == ErrUnsupported }

func InputErr(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// P11Err turns a miekg/pkcs11 error into a *DeviceError with its class.
func P11Err(device, partition string, op string, err error) error {
	if err == nil {
		return nil
	}
	var cl classed
	if errors.As(err, &cl) {
		return err // already carries its class (mechanism refusals, our own checks)
	}
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return &DeviceError{Device: device, Partition: partition, Op: op, Code: uint(rv), Class: classify(op, uint(rv)), Err: err}
	}
	return &DeviceError{Device: device, Partition: partition, Op: op, Class: ClassBusy, Err: err}
}

// DownErr is our own device-down verdict (token missing, module re-initialising, instance retired).
func DownErr(device, partition string, op string, msg string) error {
	return &DeviceError{Device: device, Partition: partition, Op: op, Class: ClassDeviceDown, Err: errors.New(msg)}
}

// noDeviceError says that no device could serve a call: the router's verdict in this package's words.
type noDeviceError struct {
	tried int
	last  error
}

func (e *noDeviceError) Error() string {
	if e.last == nil {
		return fmt.Sprintf("%v (tried %d)", ErrNoDevice, e.tried)
	}
	return fmt.Sprintf("%v (tried %d): %v", ErrNoDevice, e.tried, e.last)
}

func (e *noDeviceError) Unwrap() error { return e.last }

func (e *noDeviceError) Is(target error) bool { return target == ErrNoDevice }

// FromRouter turns the router's *failover.NoMemberError into a *noDeviceError and takes the routing
// wrapper off the errors of attempts; other errors pass.
func FromRouter(err error) error {
	var nm *failover.NoMemberError
	if err == nil || !errors.As(err, &nm) {
		return unroute(err)
	}
	return &noDeviceError{tried: nm.Tried, last: unroute(nm.Last)}
}

// routed carries an attempt's error to the router with what the router must do about it
// (failover.Classified), so that this package's own error types stay free of the router's vocabulary.
type routed struct {
	err error
	c   failover.Class
}

func (r *routed) Error() string                 { return r.err.Error() }
func (r *routed) Unwrap() error                 { return r.err }
func (r *routed) FailoverClass() failover.Class { return r.c }

// Route wraps err, when it is one of this package's errors, with its routing class.
func Route(err error) error {
	if c, ok := ownClass(err); ok {
		return &routed{err: err, c: c.route()}
	}
	return err
}

// unroute takes the routing wrapper off.
func unroute(err error) error {
	if r, ok := err.(*routed); ok {
		return r.err
	}
	return err
}

// ErrBadSignature is matched (errors.Is) by every *SignatureError.
var ErrBadSignature = errors.New("pkcs11ha: a device returned a signature that does not verify")

// SignatureError says that a device returned a signature that does not verify with the key's public key.
// It names the device, partition and key, never the data or the signature.
type SignatureError struct {
	Device    string
	Partition string
	Key       string
	Scheme    string // "RSA PKCS#1 v1.5", "RSA-PSS", "ECDSA" or "Ed25519"
}

func (e *SignatureError) Error() string {
	return fmt.Sprintf("pkcs11ha: device %s partition %s: %s signature with key %q does not verify (device fault; not returned)",
		e.Device, e.Partition, e.Scheme, e.Key)
}

func (e *SignatureError) class() Class { return ClassBadSignature }

// Is lets errors.Is(err, ErrBadSignature) match.
func (e *SignatureError) Is(target error) bool { return target == ErrBadSignature }

// ObjectCountError says that a template meant to name one object on a device matched none or several.
type ObjectCountError struct {
	What  string
	Found int
}

func (e *ObjectCountError) Error() string {
	return fmt.Sprintf("pkcs11ha: %s: %d objects match, want exactly one", e.What, e.Found)
}

// FailoverClass: a missing or ambiguous object is not a device fault.
func (e *ObjectCountError) FailoverClass() failover.Class { return failover.ClassCaller }

func (e *ObjectCountError) class() Class { return ClassCaller }

// ConfigError names the field that is wrong, and the device or partition it belongs to.
type ConfigError struct {
	Field string // e.g. "devices[1].module" or "partitions[payments].pin_env"
	Msg   string
}

func (e *ConfigError) Error() string { return "pkcs11ha: config: " + e.Field + ": " + e.Msg }
