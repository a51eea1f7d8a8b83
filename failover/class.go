package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Class is the routing meaning of an error. The table mapping PKCS#11 return codes to classes lives in the
// pkcs11ha package; failover only acts on classes.
type Class uint8

const (
	ClassNone           Class = iota // success
	ClassSessionBroken               // the backend already retried once on a fresh session; if it escapes: like Busy
	ClassHandleStale                 // same
	ClassLoginLost                   // same
	ClassDeviceDown                  // count on the breaker, retry elsewhere now
	ClassBusy                        // count on the breaker, retry elsewhere
	ClassCaller                      // return at once, no retry, excluded from the breaker
	ClassDecryptRefused              // return at once, never retry elsewhere (padding oracle), excluded
	ClassCredential                  // PIN errors: return at once, never retry, excluded from the breaker
	ClassStalled                     // our deadline passed while this process was stalled: retry, but it says nothing about the device
	ClassBadSignature                // the device answered with a signature that does not verify: a device fault; retry elsewhere, trip its breaker at once
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
	ClassStalled:        "stalled",
	ClassBadSignature:   "bad_signature",
}

// String returns the snake_case name used in metrics and logs ("device_down", "caller", ...).
func (c Class) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return "class_" + strconv.Itoa(int(c))
}

// Retryable reports whether another member may be tried after this error.
func (c Class) Retryable() bool {
	switch c {
	case ClassSessionBroken, ClassHandleStale, ClassLoginLost, ClassDeviceDown, ClassBusy, ClassStalled, ClassBadSignature:
		return true
	}
	return false
}

// BreakerFailure reports whether the error counts as a failure on the member's breaker (exactly the
// retryable classes: the others say nothing about the device's health).
func (c Class) BreakerFailure() bool { return c.Retryable() && c != ClassStalled }

// breakerExcluded: errors the breaker must neither count as success nor as failure.
func (c Class) breakerExcluded() bool {
	return c == ClassCaller || c == ClassDecryptRefused || c == ClassCredential || c == ClassStalled
}

// Classified is implemented by errors that know their class (pkcs11ha's *DeviceError does).
type Classified interface{ FailoverClass() Class }

// ClassOf returns the class of err: nil -> None; an error implementing Classified (anywhere in its chain)
// -> its class; context.Canceled or context.DeadlineExceeded (the caller's context) -> Caller;
// *AttemptTimeoutError (our own deadline) -> DeviceDown; anything else -> Busy.
func ClassOf(err error) Class {
	if err == nil {
		return ClassNone
	}
	if c, ok := err.(Classified); ok { // fast path without errors.As, which allocates
		return c.FailoverClass()
	}
	var c Classified
	if errors.As(err, &c) {
		return c.FailoverClass()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ClassCaller
	}
	return ClassBusy
}

// AttemptTimeoutError is returned (as the last error) when an attempt ran past its own attempt deadline.
// Its class is DeviceDown; it unwraps to context.DeadlineExceeded.
type AttemptTimeoutError struct {
	Member  string
	Timeout time.Duration
	// Stalled: this process itself stood still (a host hiccup, a long GC) while the attempt ran, so the
	// timeout proves nothing about the device (class Stalled: retried, not counted on the breaker).
	Stalled bool
}

func (e *AttemptTimeoutError) Error() string {
	if e.Stalled {
		return fmt.Sprintf("failover: attempt on %s timed out after %v while this process was stalled", e.Member, e.Timeout)
	}
	return fmt.Sprintf("failover: attempt on %s timed out after %v", e.Member, e.Timeout)
}

func (e *AttemptTimeoutError) Unwrap() error { return context.DeadlineExceeded }

// FailoverClass makes our own timeout a device failure, not a caller error, despite unwrapping to
// context.DeadlineExceeded.
func (e *AttemptTimeoutError) FailoverClass() Class {
	if e.Stalled {
		return ClassStalled
	}
	return ClassDeviceDown
}

// ErrNoMember is matched (errors.Is) by every *NoMemberError.
var ErrNoMember = errors.New("failover: no device can serve")

// ErrClosed is the Last error of the *NoMemberError that Do returns after Router.Close.
var ErrClosed = errors.New("failover: router closed")

// NoMemberError says that no member could serve the call: none was eligible, or every one tried failed
// with a retryable error. Last is the last attempt's error (nil when nothing was tried).
type NoMemberError struct {
	Tried int
	Last  error
}

func (e *NoMemberError) Error() string {
	if e.Last == nil {
		return fmt.Sprintf("%v (tried %d)", ErrNoMember, e.Tried)
	}
	return fmt.Sprintf("%v (tried %d): %v", ErrNoMember, e.Tried, e.Last)
}

func (e *NoMemberError) Unwrap() error { return e.Last }

func (e *NoMemberError) Is(target error) bool { return target == ErrNoMember }

// classError is the canonical error reported to a breaker for a class, so the breaker's callbacks classify
// with a type assertion instead of walking error chains.
type classError Class

func (e classError) Error() string        { return "failover: " + Class(e).String() }
func (e classError) FailoverClass() Class { return Class(e) }

var classErrors = func() (errs [numClasses]error) {
	for c := ClassSessionBroken; c < numClasses; c++ {
		errs[c] = classError(c)
	}
	return errs
}()

func errorOfClass(c Class) error {
	if c < numClasses {
		return classErrors[c]
	}
	return classErrors[ClassBusy]
}
