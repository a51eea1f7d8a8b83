package failover

import "context"

// Attempt is the handle of one running attempt, as fn sees it through AttemptOf. Its only use is Disown.
type Attempt interface {
	// Disown takes the attempt off its member's books for good: it no longer counts as abandoned (per member
	// or in total) and no longer holds a slot of the member's capacity. It is for a call that will never
	// return and that no longer says anything about the member: pkcs11ha disowns the calls stuck in a module
	// instance it retired (docs/ARCHITECTURE.md, "calls that never return") and accounts them itself.
	// An attempt still running is disowned when it is abandoned at its deadline (it is still reported to
	// the breaker then, as any timeout); one that already finished is left alone. Safe to call from any
	// goroutine, more than once.
	Disown()
}

// AttemptOf returns the attempt whose fn received ctx, or nil when ctx did not come from Do.
func AttemptOf(ctx context.Context) Attempt {
	if ac, ok := ctx.(*attemptContext); ok && ac.owner != nil {
		return ac.owner
	}
	return nil
}

// attemptDisowned: abandoned, then taken off the books by Disown; fn's return changes nothing any more.
const attemptDisowned = attemptAbandoned + 1

func (a *attempt[T]) Disown() {
	a.mu.Lock()
	switch a.state {
	case attemptRunning:
		a.disownPending = true
		a.mu.Unlock()
		return
	case attemptAbandoned:
		a.state = attemptDisowned
		a.unabandonLocked()
		a.mu.Unlock()
		a.r.release(a.m)
		return
	}
	a.mu.Unlock()
}

// unabandonLocked undoes the abandoned-call counting of a. a.mu must be held.
func (a *attempt[T]) unabandonLocked() {
	per, tot := a.m.abandoned.Add(-1), a.r.abandonedTotal.Add(-1)
	if a.capped {
		a.m.hung.Add(-1)
	}
	a.r.obs.Abandoned(a.m.idx, int(per), int(tot))
}
