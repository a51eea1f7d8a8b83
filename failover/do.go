package failover

import (
	"context"
	"errors"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Outcome says how a call was served.
type Outcome struct {
	Member   int  // member whose result (or last error) is returned; -1 when no attempt ran
	Attempts int  // attempts started, a hedge included
	Hedged   bool // a backup attempt was started
}

// Do runs one operation: pick a member, run fn under an attempt deadline = min(caller deadline,
// now+AttemptTimeout[tier]) (the caller's deadline alone when no other member could take the call: see
// lastResort) and under the member's breaker (outcome reported exactly once: on fn's
// result or at the deadline, whichever comes first; a late result is dropped), and retry on the next-best
// member for retryable classes within the caller's deadline; other classes are returned at once.
//
// fn runs on its own goroutine, so a call blocked in cgo never holds the caller past the attempt deadline;
// such an attempt is abandoned: counted per member and in total (and it keeps its slot) until fn returns.
// fn's context is cancelled at the attempt deadline or when the caller's context ends; its Deadline()
// reports the attempt deadline on Config.Clock. A saturated tier (every eligible member at Capacity) is
// given up to SpillWait for a slot before the call spills to the next tier; when every tier is saturated
// the call waits for a slot until its context ends. No eligible member at all -> *NoMemberError at once.
//
// Hedging (when enabled): only inside tier 0, after max(Floor, quantile of the primary member's recent
// latency), one backup attempt on another tier-0 member if the budget allows; the first success wins,
// the other attempt's result is dropped but still reported to its breaker and the Observer.
//
// A panic in fn is re-raised on the caller's goroutine (or on fn's goroutine if the caller has gone).
func Do[T any](ctx context.Context, r *Router, op string, mask Mask, fn func(ctx context.Context, member int) (T, error)) (T, Outcome, error) {
	c := call[T]{r: r, ctx: ctx, op: op, mask: mask, fn: fn, lastFailed: -1}
	c.out.Member = -1
	v, err := c.run()
	return v, c.out, err
}

type call[T any] struct {
	r    *Router
	ctx  context.Context
	op   string
	mask Mask
	fn   func(ctx context.Context, member int) (T, error)

	out        Outcome
	tried      Mask
	ran        Mask           // members an attempt actually ran on
	live       [2]*attempt[T] // primary and at most one hedge
	lastErr    error
	refusal    error // why a breaker refused, for NoMemberError when nothing ran
	lastFailed int   // member of the last failed attempt, for Failover events
	spilled    bool
	// stalled: tried members whose attempt timed out only because this process stood still. They are
	// tried once more before the call leaves their tier: a host hiccup must not send a call to DR.
	stalled Mask

	hedgeTimer   health.Timer
	hedgePrimary *attempt[T]
	hedgeUsed    bool
}

func (c *call[T]) run() (T, error) {
	var zero T
	r := c.r
	if r.closed.Load() {
		return zero, &NoMemberError{Last: ErrClosed}
	}
	if err := c.ctx.Err(); err != nil {
		return zero, err
	}
	if r.cfg.Hedge.Enabled {
		r.addTokens()
	}
	defer c.stopHedgeTimer()
	for {
		if c.live[0] == nil && c.live[1] == nil {
			if err := c.startNext(); err != nil {
				return zero, err
			}
		}
		var v T
		var err error
		var done bool
		select {
		case res := <-c.resultC(0):
			v, err, done = c.finished(0, res)
		case res := <-c.resultC(1):
			v, err, done = c.finished(1, res)
		case <-c.deadlineC(0):
			v, err, done = c.expired(0)
		case <-c.deadlineC(1):
			v, err, done = c.expired(1)
		case <-c.hedgeC():
			c.startHedge()
		case <-c.ctx.Done():
			return c.callerGone()
		}
		if done {
			return v, err
		}
	}
}

func (c *call[T]) resultC(i int) <-chan result[T] {
	if c.live[i] == nil {
		return nil
	}
	return c.live[i].ch
}

func (c *call[T]) deadlineC(i int) <-chan time.Time {
	if c.live[i] == nil {
		return nil
	}
	return c.live[i].timer.C()
}

// detach removes attempt i from the call, stopping its timers.
func (c *call[T]) detach(i int) *attempt[T] {
	a := c.live[i]
	c.live[i] = nil
	a.timer.Stop()
	if c.hedgePrimary == a {
		c.stopHedgeTimer()
	}
	return a
}

// handOff leaves the remaining live attempts to watchers; Do is about to return.
func (c *call[T]) handOff() {
	for i, a := range c.live {
		if a != nil {
			c.live[i] = nil
			go a.watch()
		}
	}
}

// callerGone: the caller's context ended. Running attempts are abandoned as caller errors (excluded from
// the breaker); one that finished at the same instant still wins if it succeeded.
func (c *call[T]) callerGone() (T, error) {
	var zero T
	cause := context.Cause(c.ctx)
	var won *result[T]
	var panicked *result[T]
	for i, a := range c.live {
		if a == nil {
			continue
		}
		c.detach(i)
		c.out.Member = a.m.idx
		if a.abandon(c.goneClass(a, cause)) {
			continue
		}
		res := <-a.ch
		switch {
		case res.panicked:
			panicked = &res
		case a.class == ClassNone && won == nil:
			won = &res
		}
	}
	if panicked != nil {
		panic(panicked.pval)
	}
	if won != nil {
		return won.v, nil
	}
	return zero, c.ctx.Err()
}

// goneClass is how an attempt left running when the caller's context ended is reported: a caller error,
// except for a last-resort attempt that outran its member's attempt timeout before the caller's deadline
// passed: that is the timeout it would have had without the extension, the device's fault.
func (c *call[T]) goneClass(a *attempt[T], cause error) (Class, error) {
	if a.lastResort && errors.Is(cause, context.DeadlineExceeded) && c.r.clock.Now().Sub(a.start) >= a.m.timeout {
		terr := a.timeoutError()
		return terr.FailoverClass(), terr
	}
	return ClassCaller, cause
}
