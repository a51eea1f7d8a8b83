package pkcs11ha

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"strconv"
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

// Class is what a PKCS#11 failure means for recovery: what the device backend does about it (a fresh
// session, a new key lookup, a new login, a module re-init) and, through route, what the router does.
type Class uint8

const (
	ClassNone           Class = iota // success
	ClassSessionBroken               // the session is gone: retried once on a fresh one; if it escapes, like Busy
	ClassHandleStale                 // the key handle is stale: looked up again and retried once; then like Busy
	ClassLoginLost                   // the token forgot the login: logged in again and retried once; then like Busy
	ClassDeviceDown                  // the device is down: its module is re-initialised; the call moves on at once
	ClassBusy                        // the device failed this call: counted on its breaker; the call moves on
	ClassCaller                      // the caller's mistake: returned at once, never retried, not counted
	ClassDecryptRefused              // the token refused a ciphertext: returned at once, never tried elsewhere (padding oracle)
	ClassCredential                  // fatal: the PIN was rejected; never retried anywhere, not counted
	numClasses
)

var classNames = [numClasses]string{
	ClassNone:           "none",
	ClassSessionBroken:  "session_broken",
	ClassHandleStale:    "handle_stale",
	ClassLoginLost:      "login_lost",
	ClassDeviceDown:     "device_down",
	ClassBusy:           "busy",
	ClassCaller:         "caller",
	ClassDecryptRefused: "decrypt_refused",
	ClassCredential:     "credential",
}

// String returns the snake_case name used in metrics, logs and status ("device_down", "caller", ...).
func (c Class) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return "class_" + strconv.Itoa(int(c))
}

// route is the class's meaning for the router. The session-level classes are recovered on the same device
// first (see devPartition.run); one that still escapes is an ordinary failure of that device.
func (c Class) route() failover.Class {
	switch c {
	case ClassNone:
		return failover.ClassNone
	case ClassDeviceDown:
		return failover.ClassDown
	case ClassCaller:
		return failover.ClassCaller
	case ClassDecryptRefused:
		return failover.ClassRefused
	case ClassCredential:
		return failover.ClassFatal
	}
	return failover.ClassBusy
}

// fromRoute names a router-side outcome (our attempt deadline, the caller leaving, an unclassified error)
// in this package's classes.
func fromRoute(c failover.Class) Class {
	switch c {
	case failover.ClassNone:
		return ClassNone
	case failover.ClassDown:
		return ClassDeviceDown
	case failover.ClassCaller:
		return ClassCaller
	case failover.ClassRefused:
		return ClassDecryptRefused
	case failover.ClassFatal:
		return ClassCredential
	}
	return ClassBusy
}

// classed is implemented by this package's errors.
type classed interface{ class() Class }

// ownClass returns the class of the first of this package's errors in err's chain.
func ownClass(err error) (Class, bool) {
	if c, ok := err.(classed); ok { // fast path without errors.As, which allocates
		return c.class(), true
	}
	var c classed
	if errors.As(err, &c) {
		return c.class(), true
	}
	return ClassNone, false
}

// classOf returns the class of err: its own for this package's errors, else the router's verdict in this
// package's terms.
func classOf(err error) Class {
	if err == nil {
		return ClassNone
	}
	if c, ok := ownClass(err); ok {
		return c
	}
	return fromRoute(failover.ClassOf(err))
}

// outcomeLabel is the metric label of an outcome: err's own class, else the router's verdict rc in this
// package's terms, except that a timeout during a stall of this process is "stalled" (it says nothing
// about the device).
func outcomeLabel(err error, rc failover.Class) string {
	if err == nil {
		return ClassNone.String()
	}
	if c, ok := ownClass(err); ok {
		return c.String()
	}
	if rc == failover.ClassStalled {
		return rc.String()
	}
	return fromRoute(rc).String()
}

// Classify is the project's one error-classification table (DESIGN.md "Error classes"): a pure function of
// the operation and the PKCS#11 return value.
func Classify(op Op, rv uint) Class {
	switch rv {
	case pkcs11.CKR_OK:
		return ClassNone
	case pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		if op == OpLogin {
			return ClassNone
		}
		return ClassBusy
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED:
		return ClassSessionBroken
	case pkcs11.CKR_OPERATION_ACTIVE:
		// Only a pooled session can carry a dangling operation; a fresh one cannot.
		return ClassSessionBroken
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return ClassHandleStale
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return ClassLoginLost
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return ClassDeviceDown
	case pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_GENERAL_ERROR:
		if op == OpDecrypt {
			// SoftHSM answers a bad OAEP padding with CKR_GENERAL_ERROR. A ciphertext is attacker-controlled:
			// letting it trip breakers or fail over would hand out a DoS lever and a padding oracle.
			return ClassDecryptRefused
		}
		return ClassBusy
	case pkcs11.CKR_HOST_MEMORY, pkcs11.CKR_SESSION_COUNT:
		return ClassBusy
	case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_KEY_SIZE_RANGE,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED,
		pkcs11.CKR_TEMPLATE_INCOMPLETE, pkcs11.CKR_TEMPLATE_INCONSISTENT:
		return ClassCaller
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		if op == OpDecrypt || op == OpDecryptInit {
			return ClassDecryptRefused
		}
		return ClassCaller
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		return ClassCredential
	}
	return ClassBusy
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
func (e *DeviceError) FailoverClass() failover.Class { return e.Class.route() }

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

// FailoverClass marks input errors as caller errors: never retried, never counted on a breaker.
func (e *InputError) FailoverClass() failover.Class { return failover.ClassCaller }

func (e *InputError) class() Class { return ClassCaller }

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

func (e *MechanismError) class() Class { return ClassCaller }

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
	var cl classed
	if errors.As(err, &cl) {
		return err // already carries its class (mechanism refusals, our own checks)
	}
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return &DeviceError{Device: device, Partition: partition, Op: op, Code: uint(rv), Class: Classify(op, uint(rv)), Err: err}
	}
	return &DeviceError{Device: device, Partition: partition, Op: op, Class: ClassBusy, Err: err}
}

// downErr is our own device-down verdict (token missing, module re-initialising, instance retired).
func downErr(device, partition string, op Op, msg string) error {
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

// fromRouter turns the router's *failover.NoMemberError into a *noDeviceError; other errors pass.
func fromRouter(err error) error {
	var nm *failover.NoMemberError
	if err == nil || !errors.As(err, &nm) {
		return err
	}
	return &noDeviceError{tried: nm.Tried, last: nm.Last}
}
