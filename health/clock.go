package health

import "time"

// Clock is the source of time for everything in this package and in failover, so tests can drive time
// deterministically. Use RealClock in production.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine once d has passed, unless stopped first (as time.AfterFunc);
	// the Timer's C is nil.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the subset of *time.Timer that the schedulers need.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether the call stopped it (false when it had
	// already fired or been stopped).
	Stop() bool
}

type realClock struct{}

type realTimer struct{ t *time.Timer }

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return realTimer{time.AfterFunc(d, f)} }

func (t realTimer) C() <-chan time.Time { return t.t.C }

func (t realTimer) Stop() bool { return t.t.Stop() }

// RealClock returns the wall clock (time.Now, time.NewTimer).
func RealClock() Clock { return realClock{} }
