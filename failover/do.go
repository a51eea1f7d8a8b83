package failover

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Outcome says how a call was served.
type Outcome struct {
	Member   int  // member whose result (or last error) is returned; -1 when no attempt ran
	Attempts int  // attempts started, a hedge included
	Hedged   bool // a backup attempt was started
}

func noReport(error) {}

// errSlotTaken: the picked member filled up between Pick and acquire; pick again.
var errSlotTaken = errors.New("failover: slot taken")

// Do runs one operation: pick a member, run fn under an attempt deadline = min(caller deadline,
// now+AttemptTimeout[tier]) and under the member's breaker (outcome reported exactly once: on fn's
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
	start time.Time
	// realStart is the real monotonic start (Router.mono), for the stall watchdog, which runs on real time
	// even when tests drive Config.Clock.
	realStart int64
	done      func(error) // breaker report
	actx      attemptContext
	ctx       context.Context // &actx
	cancel    context.CancelCauseFunc
	timer     health.Timer // attempt deadline
	ch        chan result[T]
	class     Class // set before the result is sent on ch

	mu    sync.Mutex
	state attemptState
}

// attemptContext carries the attempt deadline for fn's benefit; cancellation itself is driven by the
// clock timer, so a fake clock controls it in tests.
type attemptContext struct {
	context.Context
	deadline time.Time
}

func (c *attemptContext) Deadline() (time.Time, bool) { return c.deadline, true }

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

func (c *call[T]) hedgeC() <-chan time.Time {
	if c.hedgeTimer == nil {
		return nil
	}
	return c.hedgeTimer.C()
}

func (c *call[T]) stopHedgeTimer() {
	if c.hedgeTimer != nil {
		c.hedgeTimer.Stop()
		c.hedgeTimer = nil
	}
	c.hedgePrimary = nil
}

func (c *call[T]) noMember() error {
	last := c.lastErr
	if last == nil {
		last = c.refusal
	}
	return &NoMemberError{Tried: c.out.Attempts, Last: last}
}

// startNext starts the next non-hedge attempt, or says why there is none.
func (c *call[T]) startNext() error {
	r := c.r
	for {
		if c.out.Attempts >= r.cfg.MaxAttempts {
			return c.noMember()
		}
		if err := c.ctx.Err(); err != nil {
			return err
		}
		mi, err := c.pickWait()
		if err != nil {
			return err
		}
		if c.stalled != 0 {
			mi = c.secondChance(mi)
		}
		bypass := false
		if mi < 0 {
			// Panic mode (as Envoy's panic threshold): when breakers have closed off every member that
			// health still calls up, a breaker-free attempt on the best of them beats failing the call; it
			// is bounded by the attempt deadline like any other.
			if r.cfg.DisablePanic {
				return c.noMember()
			}
			if mi = r.pickPanic(c.mask, c.ran); mi < 0 {
				return c.noMember()
			}
			bypass = true
		}
		a, err := c.start(mi, false, bypass)
		if errors.Is(err, errSlotTaken) {
			continue
		}
		if err != nil { // the breaker refused (open, or half-open and full): not this member, this call
			c.tried |= 1 << mi
			c.refusal = fmt.Errorf("failover: %s: %w", r.members[mi].name, err)
			continue
		}
		c.live[0] = a
		if c.lastFailed >= 0 {
			r.obs.Failover(c.op, c.lastFailed, mi)
		}
		if a.m.tier >= 1 && !c.spilled {
			c.spilled = true
			r.obs.Spill(c.op, mi)
		}
		c.armHedge(a)
		return nil
	}
}

// secondChance returns a stalled member instead of mi when mi is in a worse tier (or none was found),
// so that a timeout caused by this process's own stall does not push the call out of its tier.
func (c *call[T]) secondChance(mi int) int {
	r := c.r
	mj, ok, _ := r.pick(c.mask&c.stalled, c.tried&^c.stalled, false, false)
	if !ok || (mi >= 0 && r.members[mj].tier >= r.members[mi].tier) {
		return mi
	}
	c.stalled &^= 1 << mj
	return mj
}

// pickWait picks a member, waiting up to SpillWait for a slot on a saturated tier before spilling to the
// next one, and for as long as the caller allows when every tier is saturated. -1 means none eligible.
func (c *call[T]) pickWait() (int, error) {
	r := c.r
	var spill health.Timer
	defer func() {
		if spill != nil {
			spill.Stop()
		}
	}()
	waitForSpill := r.cfg.SpillWait > 0
	for {
		mi, ok, saturated := r.pick(c.mask, c.tried, false, waitForSpill)
		if ok || !saturated {
			return mi, nil
		}
		r.waiters.Add(1)
		slot := *r.slotCh.Load()
		// Re-check after registering, or a release in between would be missed.
		mi, ok, saturated = r.pick(c.mask, c.tried, false, waitForSpill)
		if ok || !saturated {
			r.waiters.Add(-1)
			return mi, nil
		}
		var spillC <-chan time.Time
		if waitForSpill {
			if spill == nil {
				spill = r.clock.NewTimer(r.cfg.SpillWait)
			}
			spillC = spill.C()
		}
		select {
		case <-slot:
		case <-spillC:
			spill, waitForSpill = nil, false
		case <-c.ctx.Done():
			r.waiters.Add(-1)
			return -1, c.ctx.Err()
		case <-r.closeCh:
			r.waiters.Add(-1)
			return -1, &NoMemberError{Tried: c.out.Attempts, Last: ErrClosed}
		}
		r.waiters.Add(-1)
	}
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
	a := &attempt[T]{r: r, m: m, op: c.op, hedge: hedge, done: done, ch: make(chan result[T], 1)}
	a.start = r.clock.Now()
	a.realStart = r.mono()
	deadline := a.start.Add(m.timeout)
	if d, ok := c.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	cctx, cancel := context.WithCancelCause(c.ctx)
	a.actx, a.cancel = attemptContext{cctx, deadline}, cancel
	a.ctx = &a.actx // no separate allocation for the interface value
	a.timer = r.clock.NewTimer(m.timeout)
	c.tried |= 1 << mi
	c.ran |= 1 << mi
	c.out.Attempts++
	fn, ctx := c.fn, c.ctx
	r.spawn(func() { a.run(fn, ctx) })
	return a, nil
}

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
	// Abandoned: the outcome was reported at the deadline; only the accounting is left.
	per, tot := a.m.abandoned.Add(-1), a.r.abandonedTotal.Add(-1)
	a.r.obs.Abandoned(a.m.idx, int(per), int(tot))
	a.mu.Unlock()
	a.r.release(a.m)
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
	a.done(errorOfClass(class))
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
	per, tot := a.m.abandoned.Add(1), a.r.abandonedTotal.Add(1)
	a.r.obs.Abandoned(a.m.idx, int(per), int(tot))
	a.mu.Unlock()
	a.cancel(cause)
	a.report(class, cause, a.r.clock.Now().Sub(a.start))
	if class == ClassDown {
		a.m.ewma.Observe(a.m.timeout) // a hung device must look slow, not stay at its last good latency
	}
	return true
}

// timeoutError is the attempt's own timeout, marked Stalled when the stall watchdog saw this process
// stand still after the attempt began.
func (a *attempt[T]) timeoutError() *AttemptTimeoutError {
	return &AttemptTimeoutError{Member: a.m.name, Timeout: a.m.timeout, Stalled: a.r.stalledSince(a.realStart)}
}

// watch outlives Do for an attempt that lost a hedge race or was left running when Do returned: it
// enforces that attempt's deadline so its breaker outcome is still reported in bounded time.
func (a *attempt[T]) watch() {
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

// finished handles fn's result for attempt i; done means Do returns (v, err).
func (c *call[T]) finished(i int, res result[T]) (v T, err error, done bool) {
	a := c.detach(i)
	c.out.Member = a.m.idx
	if res.panicked {
		c.handOff()
		panic(res.pval)
	}
	switch {
	case a.class == ClassNone:
		c.handOff()
		return res.v, nil, true
	case !a.class.Retryable():
		c.handOff()
		return v, res.err, true
	}
	c.lastErr, c.lastFailed = res.err, a.m.idx
	return v, nil, false
}

// expired handles attempt i's deadline.
func (c *call[T]) expired(i int) (v T, err error, done bool) {
	a := c.live[i]
	terr := a.timeoutError()
	if !a.abandon(terr.FailoverClass(), terr) {
		return c.finished(i, <-a.ch) // the result won the race by a hair
	}
	c.detach(i)
	c.out.Member = a.m.idx
	c.lastErr, c.lastFailed = terr, a.m.idx
	if terr.Stalled {
		c.stalled |= 1 << a.m.idx
	}
	return v, nil, false
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
		if a.abandon(ClassCaller, cause) {
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

// armHedge schedules a backup for a tier-0 primary once its latency quantile is known.
func (c *call[T]) armHedge(a *attempt[T]) {
	r := c.r
	h := r.cfg.Hedge
	if !h.Enabled || c.hedgeUsed || c.hedgeTimer != nil || a.m.tier != 0 || c.out.Attempts >= r.cfg.MaxAttempts {
		return
	}
	q, ok := r.hedgeQuantile(c.mask, a.m)
	if !ok {
		return
	}
	d := max(h.Floor, q)
	if d >= a.m.timeout {
		return // the deadline would fire first and retry anyway
	}
	c.hedgeTimer, c.hedgePrimary = r.clock.NewTimer(d), a
}

// hedgeQuantile is the Hedge.Quantile latency of the fastest tier-0 member that may serve the call and
// has enough samples: what a healthy device of the tier takes. The primary's own quantile would be wrong
// once the primary has been slow for a while (its histogram full of slow calls): its calls would be hedged
// only after they had finished anyway.
func (r *Router) hedgeQuantile(mask Mask, primary *member) (time.Duration, bool) {
	best, found := time.Duration(0), false
	consider := func(m *member) {
		if q, ok := m.hist.Quantile(r.cfg.Hedge.Quantile); ok && (!found || q < best) {
			best, found = q, true
		}
	}
	consider(primary)
	if v := r.view.Load(); len(v.tiers) > 0 && v.tiers[0].tier == 0 {
		for _, i := range v.tiers[0].members {
			if m := r.members[i]; m != primary && mask&(1<<i) != 0 {
				consider(m)
			}
		}
	}
	return best, found
}

func (c *call[T]) startHedge() {
	r := c.r
	primary := c.hedgePrimary
	c.hedgeTimer, c.hedgePrimary = nil, nil
	c.hedgeUsed = true // one chance per call, budget or not
	slot := 0
	if c.live[0] != nil {
		slot = 1
	}
	if primary == nil || c.live[slot] != nil || c.out.Attempts >= r.cfg.MaxAttempts {
		return
	}
	for {
		mi, ok, _ := r.pick(c.mask, c.tried, true, false)
		if !ok || !r.takeToken() {
			return
		}
		a, err := c.start(mi, true, false)
		if err != nil {
			r.refundToken()
			if !errors.Is(err, errSlotTaken) {
				c.tried |= 1 << mi
			}
			continue
		}
		c.live[slot] = a
		c.out.Hedged = true
		r.obs.Hedged(c.op, primary.m.idx, mi)
		return
	}
}
