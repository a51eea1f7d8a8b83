package failover

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

func noReport(error) {}

// errSlotTaken: the picked member filled up between Pick and acquire; pick again.
var errSlotTaken = errors.New("failover: slot taken")

type result[T any] struct {
	v        T
	err      error
	panicked bool
	pval     any
}

type attemptState uint8

const (
	attemptRunning attemptState = iota
	attemptFinished
	attemptAbandoned
)

// attempt is one run of fn on one member. Its outcome is reported by whoever moves it out of
// attemptRunning first: fn's goroutine (finished) or the deadline/caller side (abandoned).
type attempt[T any] struct {
	r     *Router
	m     *member
	op    string
	hedge bool
	// inline: fn runs on the caller's goroutine (MemberConfig.Inline).
	inline bool
	// lastResort: no other member could take the call when this attempt began, so it runs to the caller's
	// deadline instead of the attempt timeout, re-checked at each attempt timeout (runOn, checkpoint;
	// docs/ARCHITECTURE.md, "Routing defaults", last resort).
	lastResort bool
	timeout    time.Duration // how long after start the attempt timer falls (and the timeout error says)
	falls      uint32        // the member's falls when the attempt began (checkpoint)
	start      time.Time
	// realStart is the real monotonic start (Router.mono), for the stall watchdog, which runs on real time
	// even when tests drive Config.Clock.
	realStart int64
	done      func(error) // breaker report
	actx      attemptContext
	ctx       context.Context // &actx
	fn        func(context.Context, int) (T, error)
	caller    context.Context
	timer     health.Timer // attempt deadline
	ch        chan result[T]
	class     Class // set before the result is sent on ch

	mu    sync.Mutex
	state attemptState
	// disownPending: Disown came while running; the attempt is disowned when it is abandoned.
	disownPending bool
	// capped: abandoned as a sign of a hung member (member.hung counts it).
	capped bool
}

// start launches fn on member mi: slot first (so a refused breaker can give it back), then the breaker
// (unless bypass: a panic-mode attempt reports to no breaker).
func (c *call[T]) start(mi int, hedge, bypass bool) (*attempt[T], error) {
	r := c.r
	m := r.members[mi]
	if !r.acquire(m) {
		return nil, errSlotTaken
	}
	done := noReport
	if !bypass {
		var err error
		done, err = m.breaker.Allow()
		r.deliverBreakerEvents()
		if err != nil {
			r.release(m)
			return nil, err
		}
	}
	a := &attempt[T]{r: r, m: m, op: c.op, hedge: hedge, done: done, ch: make(chan result[T], 1), timeout: m.timeout,
		falls: m.falls.Load()}
	a.start = r.clock.Now()
	a.realStart = r.mono()
	deadline := a.start.Add(m.timeout)
	if d, ok := c.ctx.Deadline(); ok {
		switch {
		case d.Before(deadline):
			deadline = d // the caller's context ends first: callerGone, not the timer, ends the attempt
		case !hedge && c.lastResort(mi, c.out.Attempts+1):
			// fn may take until the caller's deadline; the timer still checks in at the attempt timeout.
			deadline, a.lastResort = d, true
		}
	}
	// The attempt context's deadline is on Config.Clock; the clock timer, not the context, ends the attempt,
	// so a fake clock controls it in tests.
	a.actx = attemptContext{parent: c.ctx, deadline: deadline, owner: a}
	a.ctx = &a.actx // no separate allocation for the interface value
	a.fn, a.caller = c.fn, c.ctx
	c.tried |= 1 << mi
	c.ran |= 1 << mi
	c.out.Attempts++
	if m.inline && !hedge && m.abandoned.Load() == 0 {
		a.runInline()
		return a, nil
	}
	a.timer = r.clock.NewTimer(a.timeout)
	r.spawn(a)
	return a, nil
}

// runInline runs fn on the caller's goroutine (MemberConfig.Inline); its result is on a.ch when it
// returns. Nobody waits on the attempt deadline: a watchdog abandons the attempt there instead, so that
// the member's breaker, abandoned count and latency see the hang while fn still runs.
func (a *attempt[T]) runInline() {
	a.inline = true
	a.actx.follow = true // the caller is busy in fn: its cancellation is not passed on by Do
	a.mu.Lock()
	a.timer = a.r.clock.AfterFunc(a.timeout, a.overrun)
	a.mu.Unlock()
	a.run(a.fn, a.caller)
	a.mu.Lock()
	a.timer.Stop() // its C is nil: the call sees only the result
	a.mu.Unlock()
}

// overrun is the watchdog of an inline attempt. A last resort whose member still serves runs on to the
// next checkpoint (the caller is busy in fn: other members are not looked at until fn returns).
func (a *attempt[T]) overrun() {
	a.mu.Lock()
	if a.state == attemptRunning && a.lastResort {
		if next, ok := a.checkpoint(a.r.clock.Now(), a.actx.deadline); ok {
			a.timer = a.r.clock.AfterFunc(next, a.overrun)
			a.mu.Unlock()
			return
		}
	}
	a.mu.Unlock()
	terr := a.timeoutError()
	a.abandon(terr.FailoverClass(), terr)
}

// checkpoint: a last-resort attempt reached one more attempt timeout at now. It runs on, for at most
// another attempt timeout and never past the caller's deadline d, while its member has not fallen since
// the attempt began (health down, breaker open). A member that fell meanwhile (killed, reset: a call
// caught in it may never come back, even once the device is up again) is left at once, so that the
// caller hears ErrNoDevice or goes elsewhere, not waits for its own deadline. It sets the new timeout;
// the caller re-arms the timer for next.
func (a *attempt[T]) checkpoint(now, d time.Time) (next time.Duration, ok bool) {
	left := d.Sub(now)
	if left <= 0 || a.m.falls.Load() != a.falls {
		return 0, false
	}
	next = min(left, a.m.timeout)
	a.timeout = now.Add(next).Sub(a.start)
	return next, true
}

// cancel ends fn's context.
func (a *attempt[T]) cancel(cause error) { a.actx.cancel(cause) }

// runAttempt runs the attempt on the worker that took it (workers.go).
func (a *attempt[T]) runAttempt() { a.run(a.fn, a.caller) }

func (a *attempt[T]) run(fn func(context.Context, int) (T, error), caller context.Context) {
	var res result[T]
	func() {
		defer func() {
			if p := recover(); p != nil {
				res = result[T]{err: fmt.Errorf("failover: attempt panicked: %v", p), panicked: true, pval: p}
			}
		}()
		if err := a.ctx.Err(); err != nil {
			// Given up on before fn even started (deadline passed, caller left): spare the device the call.
			res.err = err
			return
		}
		res.v, res.err = fn(a.ctx, a.m.idx)
	}()
	end := a.r.clock.Now()

	a.mu.Lock()
	if a.state == attemptRunning {
		a.state = attemptFinished
		a.mu.Unlock()
		a.class = classify(res, caller)
		a.report(a.class, res.err, end.Sub(a.start))
		a.r.release(a.m) // before handing over, so the slot is free when Do returns
		a.cancel(nil)
		a.ch <- res
		return
	}
	// Abandoned: the outcome was reported at the deadline; only the accounting is left (none if disowned).
	owned := a.state == attemptAbandoned
	if owned {
		a.unabandonLocked()
	}
	a.mu.Unlock()
	if owned {
		a.r.release(a.m)
	}
	if a.inline {
		// The caller ran fn itself and waits for nothing else: it gets the late result (a success is
		// returned, a failure moves on), whose outcome the watchdog reported at the deadline.
		a.class = classify(res, caller)
		a.cancel(nil)
		a.ch <- res
		return
	}
	if res.panicked {
		panic(res.pval) // nobody is left to take it; swallowing it would hide the bug
	}
}

// classify maps fn's result to a class. A context error while the caller's context is still alive did
// not come from the caller (our own deadline never gets here: it wins the race before cancelling), so it
// is the device side timing out: Busy, not Caller.
func classify[T any](res result[T], caller context.Context) Class {
	if res.panicked {
		return ClassBusy
	}
	c := ClassOf(res.err)
	if c == ClassCaller && caller.Err() == nil {
		var cl Classified
		if !errors.As(res.err, &cl) {
			return ClassBusy
		}
	}
	return c
}

func (a *attempt[T]) report(class Class, err error, latency time.Duration) {
	if class == ClassFaulty {
		a.m.tripNow.Store(true) // read by ReadyToTrip during done
		a.done(errorOfClass(class))
		a.m.tripNow.Store(false) // unread if the breaker was not closed (or bypassed): never trip a later failure
	} else {
		a.done(errorOfClass(class))
	}
	a.r.deliverBreakerEvents()
	a.r.obs.AttemptDone(a.m.idx, a.op, class, err, latency, a.hedge)
	if class == ClassNone {
		a.m.ewma.Observe(latency)
		a.m.hist.Observe(latency)
	}
}

// abandon gives up on a running attempt (its deadline passed, or the caller left) and reports it. It
// returns false when fn's result won the race: that result is, or is about to be, on a.ch.
func (a *attempt[T]) abandon(class Class, cause error) bool {
	a.mu.Lock()
	if a.state != attemptRunning {
		a.mu.Unlock()
		return false
	}
	a.state = attemptAbandoned
	disowned := a.disownPending
	if disowned {
		a.state = attemptDisowned
	} else {
		per, tot := a.m.abandoned.Add(1), a.r.abandonedTotal.Add(1)
		if a.capped = class != ClassStalled; a.capped {
			a.m.hung.Add(1)
		}
		a.r.obs.Abandoned(a.m.idx, int(per), int(tot))
	}
	a.mu.Unlock()
	if disowned {
		a.r.release(a.m)
	}
	// Reported before fn's context ends: an inline caller returns as soon as fn does, and must find its
	// attempt's verdict already on the breaker and the observer.
	a.report(class, cause, a.r.clock.Now().Sub(a.start))
	if class == ClassDown {
		a.m.ewma.Penalize(a.timeout) // a hung device must look slow, not stay at its last good latency
	}
	a.cancel(cause)
	return true
}

// timeoutError is the attempt's own timeout, marked Stalled when the stall watchdog saw this process
// stand still after the attempt began.
func (a *attempt[T]) timeoutError() *AttemptTimeoutError {
	return &AttemptTimeoutError{Member: a.m.name, Timeout: a.timeout, Stalled: a.r.stalledSince(a.realStart)}
}

// watch outlives Do for an attempt that lost a hedge race or was left running when Do returned: it
// enforces that attempt's deadline so its breaker outcome is still reported in bounded time.
func (a *attempt[T]) watch() {
	a.actx.watchCaller() // Do no longer passes the caller's cancellation on (attemptctx.go)
	select {
	case <-a.ch:
	case <-a.timer.C():
		terr := a.timeoutError()
		a.abandon(terr.FailoverClass(), terr)
	case <-a.r.closeCh:
		// Shutting down: fn's goroutine still reports the outcome whenever fn returns.
	}
	a.timer.Stop()
}
