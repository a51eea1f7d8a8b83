package pkcs11ha

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// Op names the PKCS#11 step an error came from; the error table depends on it.
type Op string

// The operations the backend performs.
const (
	OpInitialize  Op = "C_Initialize"
	OpSlotList    Op = "C_GetSlotList"
	OpTokenInfo   Op = "C_GetTokenInfo"
	OpOpenSession Op = "C_OpenSession"
	OpLogin       Op = "C_Login"
	OpFindObjects Op = "C_FindObjects"
	OpGetAttr     Op = "C_GetAttributeValue"
	OpSignInit    Op = "C_SignInit"
	OpSign        Op = "C_Sign"
	OpDecryptInit Op = "C_DecryptInit"
	OpDecrypt     Op = "C_Decrypt"
)

// Classify is the project's one error-classification table (docs/ARCHITECTURE.md, "Error classes"): a
// pure function of the operation and the PKCS#11 return value.
func Classify(op Op, rv uint) failover.Class {
	switch rv {
	case pkcs11.CKR_OK:
		return failover.ClassNone
	case pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		if op == OpLogin {
			return failover.ClassNone
		}
		return failover.ClassBusy
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED:
		return failover.ClassSessionBroken
	case pkcs11.CKR_OPERATION_ACTIVE:
		// Only a pooled session can carry a dangling operation; a fresh one cannot.
		return failover.ClassSessionBroken
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return failover.ClassHandleStale
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return failover.ClassLoginLost
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return failover.ClassDeviceDown
	case pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_GENERAL_ERROR:
		if op == OpDecrypt {
			// SoftHSM answers a bad OAEP padding with CKR_GENERAL_ERROR. A ciphertext is attacker-controlled:
			// letting it trip breakers or fail over would hand out a DoS lever and a padding oracle.
			return failover.ClassDecryptRefused
		}
		return failover.ClassBusy
	case pkcs11.CKR_HOST_MEMORY, pkcs11.CKR_SESSION_COUNT:
		return failover.ClassBusy
	case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_KEY_SIZE_RANGE,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED,
		pkcs11.CKR_TEMPLATE_INCOMPLETE, pkcs11.CKR_TEMPLATE_INCONSISTENT:
		return failover.ClassCaller
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		if op == OpDecrypt || op == OpDecryptInit {
			return failover.ClassDecryptRefused
		}
		return failover.ClassCaller
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		return failover.ClassCredential
	}
	return failover.ClassBusy
}

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
	Op        Op
	Code      uint // CKR_* value; 0 for our own failures (timeouts, token not found)
	Class     failover.Class
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
	b.WriteString(string(e.Op))
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

// FailoverClass lets the router act on the error.
func (e *DeviceError) FailoverClass() failover.Class { return e.Class }

// Unwrap returns the underlying error.
func (e *DeviceError) Unwrap() error { return e.Err }

// Is maps classes to the package sentinels so callers can use errors.Is.
func (e *DeviceError) Is(target error) bool {
	switch target {
	case ErrPIN:
		return e.Class == failover.ClassCredential
	case ErrDeviceDown:
		return e.Class == failover.ClassDeviceDown
	case rsa.ErrDecryption:
		return e.Class == failover.ClassDecryptRefused
	}
	return false
}

// Sentinel errors callers branch on.
var (
	ErrUnknownPartition = errors.New("pkcs11ha: unknown partition")
	ErrUnknownKey       = errors.New("pkcs11ha: unknown key")
	ErrNoDevice         = failover.ErrNoMember
	ErrPIN              = errors.New("pkcs11ha: PIN rejected by the token (not retried)")
	ErrDeviceDown       = errors.New("pkcs11ha: device down")
	ErrClosed           = errors.New("pkcs11ha: cluster closed")
	ErrUnsupported      = errors.New("pkcs11ha: not supported")
)

// InputError is a caller mistake caught before any HSM call (wrong digest length, wrong options).
type InputError struct{ Msg string }

func (e *InputError) Error() string { return "pkcs11ha: " + e.Msg }

// FailoverClass marks input errors as caller errors: never retried, never counted on a breaker.
func (e *InputError) FailoverClass() failover.Class { return failover.ClassCaller }

// MechanismError says the token cannot do what was asked (e.g. RSA-OAEP with SHA-256 on SoftHSM 2.6.1).
type MechanismError struct {
	Device    string
	Mechanism string
}

func (e *MechanismError) Error() string {
	return fmt.Sprintf("pkcs11ha: device %s does not support %s (set policy.oaep_fallback to decode OAEP in Go)", e.Device, e.Mechanism)
}

// FailoverClass: a refused mechanism is the caller's to handle, never a device fault.
func (e *MechanismError) FailoverClass() failover.Class { return failover.ClassCaller }

// Is lets errors.Is(err, ErrUnsupported) match.
func (e *MechanismError) Is(target error) bool { return target == ErrUnsupported }

func inputErr(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// p11err turns a miekg/pkcs11 error into a *DeviceError with its class.
func p11err(device, partition string, op Op, err error) error {
	if err == nil {
		return nil
	}
	var cl failover.Classified
	if errors.As(err, &cl) {
		return err // already carries its class (mechanism refusals, our own checks)
	}
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return &DeviceError{Device: device, Partition: partition, Op: op, Code: uint(rv), Class: Classify(op, uint(rv)), Err: err}
	}
	return &DeviceError{Device: device, Partition: partition, Op: op, Class: failover.ClassBusy, Err: err}
}

// downErr is our own device-down verdict (token missing, module re-initialising, instance retired).
func downErr(device, partition string, op Op, msg string) error {
	return &DeviceError{Device: device, Partition: partition, Op: op, Class: failover.ClassDeviceDown, Err: errors.New(msg)}
}
