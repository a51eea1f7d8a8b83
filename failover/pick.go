package failover

// Pick is the routing decision alone: the lowest tier with an eligible member in mask and not in tried,
// then power-of-two-choices on cost = peak-EWMA × (in-flight + 1) (with two candidates, both compared;
// ties broken at random). Eligible = up, breaker not open (and past its backoff), in-flight < Capacity,
// abandoned < MaxAbandonedPerMember (not counting attempts given up on during a stall of this process) and
// total abandoned < MaxAbandonedTotal. Lock-free, no allocation.
func (r *Router) Pick(mask, tried Mask) (member int, ok bool) {
	member, ok, _ = r.pick(mask, tried, false, false)
	return member, ok
}

// pick is Pick with two knobs for Do: tier0Only (hedges never leave tier 0) and stopAtSaturated (stop at
// the first tier whose only obstacle is capacity, instead of spilling, so Do can wait for a slot).
// saturated reports that some tier was skipped only for capacity.
func (r *Router) pick(mask, tried Mask, tier0Only, stopAtSaturated bool) (member int, ok, saturated bool) {
	if r.abandonedTotal.Load() >= r.maxAbTotal {
		return -1, false, false
	}
	allowed := mask &^ tried
	v := r.view.Load()
	now := int64(0) // read the clock only if some breaker gate needs it
	for ti := range v.tiers {
		tv := &v.tiers[ti]
		if tier0Only && tv.tier != 0 {
			break
		}
		if tv.mask&allowed == 0 {
			continue
		}
		var cand [MaxMembers]uint8
		n, full := 0, false
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
			if m.hung.Load() >= r.maxAbPer {
				continue
			}
			if m.capacity > 0 && m.inFlight.Load() >= m.capacity {
				full = true
				continue
			}
			cand[n] = i
			n++
		}
		switch {
		case n == 1:
			return int(cand[0]), true, saturated
		case n > 1:
			return r.p2c(&cand, n), true, saturated
		case full:
			saturated = true
			if stopAtSaturated {
				return -1, false, true
			}
		}
	}
	return -1, false, saturated
}

func (r *Router) randN(n int) int { return min(int(r.rand()*float64(n)), n-1) }

func (r *Router) p2c(cand *[MaxMembers]uint8, n int) int {
	a, b := cand[0], cand[1]
	if n > 2 {
		i := r.randN(n)
		j := r.randN(n - 1)
		if j >= i {
			j++
		}
		a, b = cand[i], cand[j]
	}
	ca, cb := r.cost(a), r.cost(b)
	switch {
	case ca < cb:
		return int(a)
	case cb < ca:
		return int(b)
	case r.rand() < 0.5: // equal cost (e.g. two idle members, same initial latency): spread the load
		return int(a)
	default:
		return int(b)
	}
}

func (r *Router) cost(i uint8) float64 {
	m := r.members[i]
	return float64(m.ewma.Value()) * float64(m.inFlight.Load()+1)
}
