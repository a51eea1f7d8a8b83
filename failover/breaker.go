package failover

import (
	"math"
	"sync"
	"sync/atomic"
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
				return true // a failure no count needs to confirm (ClassFaulty)
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
// member's backoff bookkeeping. It must not call the breaker, nor the observer: the event is queued and
// delivered once the breaker call returns (deliverBreakerEvents).
func (r *Router) onBreakerChange(i int, from, to gobreaker.State) {
	m := r.members[i]
	m.brState.Store(int32(to))
	now := r.mono()
	switch to {
	case gobreaker.StateOpen:
		if from == gobreaker.StateClosed && time.Duration(now-m.closedAt) >= r.forgiveAfter {
			m.offenses.Store(0) // stayed healthy long enough: a first offence again
		}
		d := r.openPeriod(int(m.offenses.Add(1)))
		m.openFor.Store(int64(d))
		m.gate.Store(now + int64(d))
		m.falls.Add(1)
	case gobreaker.StateClosed:
		m.gate.Store(0)
		m.closedAt = now
	case gobreaker.StateHalfOpen:
		// Keep the gate: it has passed (Pick let the trial through), and Status reads it.
	}
	r.brEvents.push(breakerEvent{member: i, from: from, to: to})
	r.notify()
}

// breakerEvent is a state change gobreaker reported under its lock.
type breakerEvent struct {
	member   int
	from, to gobreaker.State
}

// breakerEvents queues breaker changes for the observer: gobreaker reports them under its mutex, where a
// slow observer (a metric and a log line) would stall every Allow on that breaker. Like health.Monitor's
// changes, they are delivered in order, never concurrently, with no lock held.
type breakerEvents struct {
	pending    atomic.Int32 // events queued: the hot path's only cost is loading it
	mu         sync.Mutex
	queue      []breakerEvent
	delivering bool
}

func (q *breakerEvents) push(e breakerEvent) {
	q.mu.Lock()
	q.queue = append(q.queue, e)
	q.pending.Add(1)
	q.mu.Unlock()
}

// next takes the oldest event; when there is none it ends this delivery.
func (q *breakerEvents) next() (breakerEvent, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		q.delivering = false
		return breakerEvent{}, false
	}
	e := q.queue[0]
	q.queue = q.queue[1:]
	q.pending.Add(-1)
	return e, true
}

// deliverBreakerEvents hands queued breaker changes to the observer. It runs after every call into a
// breaker; whoever finds nobody delivering becomes the deliverer.
func (r *Router) deliverBreakerEvents() {
	q := &r.brEvents
	if q.pending.Load() == 0 {
		return
	}
	q.mu.Lock()
	if q.delivering {
		q.mu.Unlock()
		return
	}
	q.delivering = true
	q.mu.Unlock()
	ended := false
	defer func() {
		if !ended { // the observer panicked: let a later call deliver the rest
			q.mu.Lock()
			q.delivering = false
			q.mu.Unlock()
		}
	}()
	for {
		e, ok := q.next()
		if !ok {
			ended = true
			return
		}
		r.obs.BreakerChanged(e.member, e.from.String(), e.to.String())
	}
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
