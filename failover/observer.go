package failover

import "time"

// Observer gets every event exactly once; pkcs11ha turns them into Prometheus metrics and slog lines.
// Methods are called synchronously on the goroutine of the call (or attempt) that caused the event, never
// under a breaker's lock; they should be cheap, as that call waits for them, and must not call back into
// the Router. BreakerChanged calls come in the order of the changes and never concurrently.
type Observer interface {
	// AttemptDone: one per attempt, when its outcome is known: fn's error (nil on success), or at its
	// deadline an *AttemptTimeoutError (class Down, or Stalled), or when the caller gave up the cause of
	// the caller's context (class Caller). latency is measured on Config.Clock.
	AttemptDone(member int, op string, class Class, err error, latency time.Duration, hedge bool)
	BreakerChanged(member int, from, to string) // "closed" | "half-open" | "open"
	Failover(op string, from, to int)           // a retry moved to another member
	Spill(op string, to int)                    // a call went to tier >= 1 (once per call)
	Hedged(op string, primary, backup int)
	Abandoned(member int, nowPerMember, nowTotal int) // on every change (+ and -)
}

type nopObserver struct{}

func (nopObserver) AttemptDone(int, string, Class, error, time.Duration, bool) {}
func (nopObserver) BreakerChanged(int, string, string)                         {}
func (nopObserver) Failover(string, int, int)                                  {}
func (nopObserver) Spill(string, int)                                          {}
func (nopObserver) Hedged(string, int, int)                                    {}
func (nopObserver) Abandoned(int, int, int)                                    {}
