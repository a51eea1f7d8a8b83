package failover

// lastResort reports whether member mi is the last that could take this call: no further attempt is
// allowed, or no other member in the mask is eligible and untried (a member tried before a stall of this
// process counts: it gets a second chance). A busy device is then given until the caller's deadline rather
// than the attempt timeout: leaving it could only turn its slowness into the caller's error. A member
// that is merely full counts as eligible: a slot may free up, so the hang guarantee keeps the attempt
// timeout (docs/ARCHITECTURE.md, "Routing defaults", last resort).
//
// attempts is how many attempts the call has started, the one on mi included.
func (c *call[T]) lastResort(mi, attempts int) bool {
	if attempts >= c.r.cfg.MaxAttempts {
		return true
	}
	return !c.r.anyEligible(c.mask, c.tried&^c.stalled|1<<mi)
}

// anyEligible reports whether some member in mask and not in tried is up, past its breaker's backoff and
// under the abandoned-call caps, whatever its in-flight count. Lock-free, no allocation.
func (r *Router) anyEligible(mask, tried Mask) bool {
	if r.abandonedTotal.Load() >= r.maxAbTotal {
		return false
	}
	allowed := mask &^ tried
	v := r.view.Load()
	now := int64(0)
	for ti := range v.tiers {
		tv := &v.tiers[ti]
		if tv.mask&allowed == 0 {
			continue
		}
		for _, i := range tv.members {
			if allowed&(1<<i) == 0 {
				continue
			}
			m := r.members[i]
			if g := m.gate.Load(); g != 0 {
				if now == 0 {
					now = r.mono()
				}
				if now < g {
					continue
				}
			}
			if m.hung.Load() < r.maxAbPer {
				return true
			}
		}
	}
	return false
}
