package failover

import (
	"time"
)

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

// stallTick is how often the stall watchdog wakes up.
const stallTick = 5 * time.Millisecond

// watchStalls notices when this process stood still: a host hiccup or a long pause makes every attempt in
// flight miss its deadline at once, and counting those on the breakers would eject healthy devices (all of
// a tier at once) and send traffic to DR. A ticker that wakes up more than threshold late marks a stall.
func (r *Router) watchStalls(threshold time.Duration) {
	t := time.NewTicker(stallTick)
	defer t.Stop()
	prev := r.mono()
	for {
		select {
		case <-t.C:
		case <-r.closeCh:
			return
		}
		now := r.mono()
		if time.Duration(now-prev) > stallTick+threshold {
			r.lastStall.Store(now)
		}
		prev = now
	}
}

// stalledSince reports whether a stall ended after start (a mono() time), or is going on now (the
// watchdog has not run for longer than the threshold: it would mark the stall when it next wakes up).
func (r *Router) stalledSince(start int64) bool {
	if r.cfg.StallThreshold <= 0 {
		return false
	}
	return r.lastStall.Load() >= start
}
