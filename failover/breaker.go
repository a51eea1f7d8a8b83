package failover

import (
	"math"
	"time"

	"github.com/sony/gobreaker/v2"
)

func (r *Router) breakerSettings(i int, name string) gobreaker.Settings {
	b := r.cfg.Breaker
	return gobreaker.Settings{
		Name:         name,
		MaxRequests:  b.HalfOpenMax,
		Interval:     b.Window,
		BucketPeriod: b.Window / 10,
		Timeout:      b.OpenBase,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if r.members[i].tripNow.Swap(false) {
				return true // a failure no count needs to confirm (ClassBadSignature)
			}
			if c.ConsecutiveFailures >= b.ConsecutiveFailures {
				return true
			}
			// The ratio is over completed, counted requests: in-flight and excluded ones say nothing yet.
			done := c.TotalSuccesses + c.TotalFailures
			return done >= b.MinRequests && float64(c.TotalFailures) >= b.FailureRatio*float64(done)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) { r.onBreakerChange(i, from, to) },
		IsSuccessful:  func(err error) bool { return ClassOf(err) == ClassNone },
		IsExcluded:    func(err error) bool { return ClassOf(err).breakerExcluded() },
	}
}

// onBreakerChange runs under the breaker's lock (gobreaker calls it there), which also serialises the
// member's backoff bookkeeping. It must not call the breaker.
func (r *Router) onBreakerChange(i int, from, to gobreaker.State) {
	m := r.members[i]
	now := r.mono()
	switch to {
	case gobreaker.StateOpen:
		if from == gobreaker.StateClosed && time.Duration(now-m.closedAt) >= r.forgiveAfter {
			m.offenses = 0 // stayed healthy long enough: a first offence again
		}
		m.offenses++
		d := r.openPeriod(m.offenses)
		m.openFor.Store(int64(d))
		m.gate.Store(now + int64(d))
	case gobreaker.StateClosed:
		m.gate.Store(0)
		m.closedAt = now
	case gobreaker.StateHalfOpen:
		// Keep the gate: gobreaker's own timeout is OpenBase, ours may be longer (repeat offender), and
		// Status() can move the breaker to half-open before our backoff has passed.
	}
	r.obs.BreakerChanged(i, from.String(), to.String())
	r.notify()
}

// openPeriod is OpenBase doubled per repeated offence, capped at OpenMax, with ±20 % jitter for repeat
// offenders so devices that failed together do not come back in lockstep; never below OpenBase (the
// breaker's own timeout) nor above OpenMax.
func (r *Router) openPeriod(offenses int) time.Duration {
	base, limit := float64(r.cfg.Breaker.OpenBase), float64(r.cfg.Breaker.OpenMax)
	d := min(base*math.Exp2(float64(min(offenses-1, 62))), limit)
	if offenses > 1 {
		d *= 1 + 0.4*(r.rand()-0.5)
	}
	return time.Duration(min(max(d, base), limit))
}
