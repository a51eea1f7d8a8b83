package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Class is what an attempt's error means for routing: whether the call may move on to another member,
// and whether the error counts against the member's breaker. Nothing more: why a device failed (a broken
// session, a lost login, ...) is the backend's business (pkcs11ha maps its own classes onto these).
type Class uint8

const (
	ClassNone    Class = iota // success
	ClassBusy                 // the member failed this call: counted on its breaker; the call moves on to another member
	ClassDown                 // the member is down: counted on its breaker; the call moves on. Our attempt timeouts have it
	ClassFaulty               // the member answered wrongly (its result failed a check): its breaker opens at once; the call moves on
	ClassStalled              // our deadline passed while this process stood still: the call moves on (its tier first), not counted
	ClassCaller               // the caller's fault (bad input, its context ended): returned at once, not counted
	ClassRefused              // the member refused this input (a decryption): returned at once, never tried elsewhere, not counted
	ClassFatal                // retrying cannot help (a rejected credential): returned at once, not counted
	numClasses
)

var classNames = [numClasses]string{
	ClassNone:    "none",
	ClassBusy:    "busy",
	ClassDown:    "down",
	ClassFaulty:  "faulty",
	ClassStalled: "stalled",
	ClassCaller:  "caller",
	ClassRefused: "refused",
	ClassFatal:   "fatal",
}

// String returns the class name ("down", "caller", ...).
func (c Class) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return "class_" + strconv.Itoa(int(c))
}

// Retryable reports whether another member may be tried after this error.
func (c Class) Retryable() bool {
	return c == ClassBusy || c == ClassDown || c == ClassFaulty || c == ClassStalled
}

// BreakerFailure reports whether the error counts as a failure on the member's breaker.
func (c Class) BreakerFailure() bool { return c == ClassBusy || c == ClassDown || c == ClassFaulty }

// breakerExcluded: errors the breaker must neither count as success nor as failure.
func (c Class) breakerExcluded() bool { return c != ClassNone && !c.BreakerFailure() }

// Classified is implemented by errors that know their class (pkcs11ha's errors do).
type Classified interface{ FailoverClass() Class }

// ClassOf returns the class of err: nil -> None; an error implementing Classified (anywhere in its chain)
// -> its class; context.Canceled or context.DeadlineExceeded (the caller's context) -> Caller;
// *AttemptTimeoutError (our own deadline) -> Down (Stalled during a stall); anything else -> Busy.
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
// Its class is Down; it unwraps to context.DeadlineExceeded.
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
	return ClassDown
}

// ErrNoMember is matched (errors.Is) by every *NoMemberError.
var ErrNoMember = errors.New("failover: no member can serve")

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
	for c := ClassBusy; c < numClasses; c++ {
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
