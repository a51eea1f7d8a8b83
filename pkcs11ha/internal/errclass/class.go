package errclass

import (
	"errors"
	"strconv"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// The PKCS#11 functions the backend calls, as DeviceError.Op names them; the error table depends on them.
const (
	OpInitialize  = "C_Initialize"
	OpSlotList    = "C_GetSlotList"
	OpTokenInfo   = "C_GetTokenInfo"
	OpOpenSession = "C_OpenSession"
	OpLogin       = "C_Login"
	OpFindObjects = "C_FindObjects"
	OpSignInit    = "C_SignInit"
	OpSign        = "C_Sign"
	OpDecryptInit = "C_DecryptInit"
	OpDecrypt     = "C_Decrypt"
	OpEncryptInit = "C_EncryptInit"
	OpEncrypt     = "C_Encrypt"
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
	ClassBadSignature                // the device returned a signature that does not verify (verify.go): its breaker opens at once; the call moves on
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
	ClassBadSignature:   "bad_signature",
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
	case ClassBadSignature:
		return failover.ClassFaulty
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
	case failover.ClassFaulty:
		return ClassBadSignature
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

// ClassOf returns the class of err: its own for this package's errors, else the router's verdict in this
// package's terms.
func ClassOf(err error) Class {
	if err == nil {
		return ClassNone
	}
	if c, ok := ownClass(err); ok {
		return c
	}
	return fromRoute(failover.ClassOf(err))
}

// OutcomeLabel is the metric label of an outcome: err's own class, else the router's verdict rc in this
// package's terms, except that a timeout during a stall of this process is "stalled" (it says nothing
// about the device).
func OutcomeLabel(err error, rc failover.Class) string {
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

// classify is the project's one error-classification table (docs/ARCHITECTURE.md, "Error classes"): a
// pure function of the operation and the PKCS#11 return value.
func classify(op string, rv uint) Class {
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
			// SoftHSM 2.6.1 answers a bad OAEP padding, an AES-GCM tag that does not match and a bad
			// AES-CBC-PAD padding with CKR_GENERAL_ERROR (single-part C_Decrypt: the only decryption called). A ciphertext is attacker-controlled: letting it trip breakers or fail over
			// would hand out a DoS lever and a padding oracle. (C_Encrypt failing is the device's: a Seal
			// retried elsewhere computes the same output, docs/ARCHITECTURE.md, "Secret keys".)
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
