package failover

// panicMember is panic mode (as Envoy's panic threshold): when breakers have closed off every member that
// health still calls up, a breaker-free attempt on the best of them beats failing the call; it is bounded
// by the attempt deadline like any other. -1 when panic mode is off or no member is left.
func (c *call[T]) panicMember() int {
	if c.r.cfg.DisablePanic {
		return -1
	}
	return c.r.pickPanic(c.mask, c.ran)
}

// pickPanic picks, in the lowest tier that has one, the cheapest member that health says is up, ignoring
// breakers and their backoff; abandoned-call caps and capacity still apply. -1 if there is none.
func (r *Router) pickPanic(mask, ran Mask) int {
	if r.abandonedTotal.Load() >= r.maxAbTotal {
		return -1
	}
	allowed := mask &^ ran
	v := r.view.Load()
	for ti := range v.tiers {
		tv := &v.tiers[ti]
		best, bestCost := -1, 0.0
		for _, i := range tv.members {
			m := r.members[i]
			if allowed&(1<<i) == 0 || m.hung.Load() >= r.maxAbPer || (m.capacity > 0 && m.inFlight.Load() >= m.capacity) {
				continue
			}
			if c := r.cost(i); best < 0 || c < bestCost {
				best, bestCost = int(i), c
			}
		}
		if best >= 0 {
			return best
		}
	}
	return -1
}
