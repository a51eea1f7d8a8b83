package failover

import (
	"time"

	"github.com/sony/gobreaker/v2"
)

// MemberStatus is one member's routing state.
type MemberStatus struct {
	Name      string
	Tier      int
	Up        bool
	Breaker   string    // "closed" | "half-open" | "open"
	OpenUntil time.Time // zero unless open
	// Offenses is how many times the breaker opened since the member was last forgiven (it stayed closed
	// for min(OpenMax, 10 × Window)): what the current backoff doubles on. 0 = never opened.
	Offenses  int
	EWMA      time.Duration
	InFlight  int
	Abandoned int
	// AbandonedCap: Abandoned has reached MaxAbandonedPerMember, or the Router's total has reached
	// MaxAbandonedTotal: the member takes no call until some of those calls return.
	AbandonedCap bool
}

// Status returns every member's state, in member order.
func (r *Router) Status() []MemberStatus {
	out := make([]MemberStatus, len(r.members))
	now := r.mono()
	for i, m := range r.members {
		st := gobreaker.State(m.brState.Load())
		s := MemberStatus{
			Name:      m.name,
			Tier:      m.tier,
			Up:        m.upFlag.Load(),
			Breaker:   st.String(),
			EWMA:      m.ewma.Value(),
			InFlight:  int(m.inFlight.Load()),
			Offenses:  int(m.offenses.Load()),
			Abandoned: int(m.abandoned.Load()),
		}
		s.AbandonedCap = m.hung.Load() >= r.maxAbPer || r.abandonedTotal.Load() >= r.maxAbTotal
		// What routing sees is what counts: our backoff (the gate) outlasts gobreaker's own open timeout,
		// and once it has passed, the next call the member gets is a half-open trial.
		if g := m.gate.Load(); g != 0 {
			switch {
			case now < g:
				s.Breaker = gobreaker.StateOpen.String()
				s.OpenUntil = r.epoch.Add(time.Duration(g - 1))
			case st == gobreaker.StateOpen:
				s.Breaker = gobreaker.StateHalfOpen.String()
			}
		}
		out[i] = s
	}
	return out
}
