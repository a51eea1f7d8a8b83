package failover

import (
	"errors"
	"fmt"
)

// noMember is the call's end when no member can serve: the last attempt's error, or why a breaker refused.
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
			if mi = c.panicMember(); mi < 0 {
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
		if !a.inline { // an inline attempt has finished already
			c.armHedge(a)
		}
		return nil
	}
}

// finished handles fn's result for attempt i: success and errors that must not move on end the call (done:
// Do returns v, err); a retryable one is remembered and the call goes on to the next member.
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

// expired handles attempt i's deadline: a last resort by now runs on (runOn); otherwise the attempt is
// abandoned (reported Down, or Stalled) and the call goes on, and a member that timed out only because this
// process stood still gets a second chance.
func (c *call[T]) expired(i int) (v T, err error, done bool) {
	a := c.live[i]
	terr := a.timeoutError()
	if c.runOn(a) {
		return v, nil, false
	}
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

// runOn: attempt a reached its attempt timeout, and no other member could take the call now (a last
// resort from the start, or the others were shut out while it ran): rather than give up on it and fail
// the call, it runs on towards the caller's deadline, one attempt timeout at a time while its own member
// still serves (checkpoint). False when the caller has no deadline or it has passed, another member could
// serve, or a's member went down or was shut out by its breaker.
func (c *call[T]) runOn(a *attempt[T]) bool {
	d, ok := c.ctx.Deadline()
	if !ok || a.hedge || !c.lastResort(a.m.idx, c.out.Attempts) {
		return false
	}
	next, ok := a.checkpoint(c.r.clock.Now(), d)
	if !ok {
		return false
	}
	a.timer.Stop()
	a.timer = c.r.clock.NewTimer(next)
	a.lastResort = true
	return true
}
