package failover

import (
	"errors"
	"time"
)

// tokenUnit is one hedge token; the bucket is kept in millionths so adding Budget is integer-atomic.
const (
	tokenUnit = 1_000_000
	tokenCap  = 10 * tokenUnit
)

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

func (r *Router) addTokens() {
	for {
		cur := r.tokens.Load()
		next := min(cur+r.budget, tokenCap)
		if next == cur || r.tokens.CompareAndSwap(cur, next) {
			return
		}
	}
}

func (r *Router) takeToken() bool {
	for {
		cur := r.tokens.Load()
		if cur < tokenUnit {
			return false
		}
		if r.tokens.CompareAndSwap(cur, cur-tokenUnit) {
			return true
		}
	}
}

func (r *Router) refundToken() { r.tokens.Add(tokenUnit) }
