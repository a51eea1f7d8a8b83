package pkcs11ha

import "github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"

// The library's error types and the error table live in internal/errclass, where the device backend
// (internal/devicebackend) creates them too; these aliases are the public names, so errors.As and errors.Is
// on them work for callers whichever side made the error (docs/ARCHITECTURE.md, "Device backend").

// DeviceError is a PKCS#11 failure on one device. Callers branch on Class (or errors.Is with the
// sentinels below); the PIN never appears in it.
type DeviceError = errclass.DeviceError

// InputError is a caller mistake caught before any HSM call (wrong digest length, wrong options).
type InputError = errclass.InputError

// MechanismError says the token cannot do what was asked (e.g. RSA-OAEP with SHA-256 on SoftHSM 2.6.1).
// It matches errors.Is(err, ErrUnsupported).
type MechanismError = errclass.MechanismError

// SignatureError says that a device returned a signature that does not verify with the key's public key.
// It names the device, partition and key, never the data or the signature.
type SignatureError = errclass.SignatureError

// ObjectCountError says that a template meant to name one object on a device matched none or several.
type ObjectCountError = errclass.ObjectCountError

// AuthError is a refusal of the caller's input: Open's (errors.Is(err, ErrAuthentication)), VerifyMAC's
// (ErrMACMismatch) or DecryptCBCPad's (ErrBadPadding), with the device that decided, if one did; its
// class is decrypt_refused.
type AuthError = errclass.AuthError

// ConfigError names the field that is wrong, and the device or partition it belongs to.
type ConfigError = errclass.ConfigError

// Class is what a PKCS#11 failure means for recovery: what the device backend does about it (a fresh
// session, a new key lookup, a new login, a module re-init) and what the router does.
type Class = errclass.Class

// The classes of the error table (docs/ARCHITECTURE.md, "Error classes").
const (
	ClassNone           = errclass.ClassNone           // success
	ClassSessionBroken  = errclass.ClassSessionBroken  // the session is gone: retried once on a fresh one; if it escapes, like Busy
	ClassHandleStale    = errclass.ClassHandleStale    // the key handle is stale: looked up again and retried once; then like Busy
	ClassLoginLost      = errclass.ClassLoginLost      // the token forgot the login: logged in again and retried once; then like Busy
	ClassDeviceDown     = errclass.ClassDeviceDown     // the device is down: its module is re-initialised; the call moves on at once
	ClassBusy           = errclass.ClassBusy           // the device failed this call: counted on its breaker; the call moves on
	ClassCaller         = errclass.ClassCaller         // the caller's mistake: returned at once, never retried, not counted
	ClassDecryptRefused = errclass.ClassDecryptRefused // the token refused a ciphertext: returned at once, never tried elsewhere (padding oracle)
	ClassCredential     = errclass.ClassCredential     // fatal: the PIN was rejected; never retried anywhere, not counted
	ClassBadSignature   = errclass.ClassBadSignature   // the device returned a signature that does not verify: its breaker opens at once; the call moves on
)

// Sentinel errors callers branch on.
var (
	ErrUnknownPartition = errclass.ErrUnknownPartition
	ErrUnknownKey       = errclass.ErrUnknownKey
	ErrNoDevice         = errclass.ErrNoDevice
	ErrPIN              = errclass.ErrPIN
	ErrDeviceDown       = errclass.ErrDeviceDown
	ErrClosed           = errclass.ErrClosed
	ErrUnsupported      = errclass.ErrUnsupported
	// ErrBadSignature is matched (errors.Is) by every *SignatureError.
	ErrBadSignature = errclass.ErrBadSignature
)

// Errors of SecretKey's Open, VerifyMAC and DecryptCBCPad: the caller's input is refused. They are never a
// device's fault, never retried on another device and never counted on a breaker.
var (
	// ErrAuthentication: Open's input is not a ciphertext of this key with this additional data (wrong
	// key or additional data, tampered or truncated).
	ErrAuthentication = errclass.ErrAuthentication
	// ErrMACMismatch: VerifyMAC's MAC is not the key's MAC of the data.
	ErrMACMismatch = errclass.ErrMACMismatch
	// ErrBadPadding: DecryptCBCPad's input does not decrypt to PKCS#7-padded data (wrong key or IV, or a
	// ciphertext altered or not made with padding). CBC is not authenticated: a ciphertext that does
	// decrypt may still have been altered (docs/encryption.md).
	ErrBadPadding = errclass.ErrBadPadding
)
