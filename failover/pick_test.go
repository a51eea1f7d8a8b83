package failover

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPickEligibility(t *testing.T) {
	type setup func(e *env)
	tests := []struct {
		name   string
		cfg    Config
		tiers  []int
		setup  setup
		mask   Mask
		tried  Mask
		want   int
		wantOK bool
	}{
		{name: "lowest tier", tiers: []int{1, 0}, mask: AllMembers, want: 1, wantOK: true},
		{name: "mask", tiers: []int{0, 1}, mask: 1 << 1, want: 1, wantOK: true},
		{name: "tried", tiers: []int{0, 1}, mask: AllMembers, tried: 1 << 0, want: 1, wantOK: true},
		{name: "empty mask", tiers: []int{0}, mask: 0, want: -1},
		{name: "down", tiers: []int{0, 1}, mask: AllMembers, want: 1, wantOK: true,
			setup: func(e *env) { e.r.SetUp(0, false) }},
		{name: "down and back", tiers: []int{0, 1}, mask: AllMembers, want: 0, wantOK: true,
			setup: func(e *env) { e.r.SetUp(0, false); e.r.SetUp(0, true) }},
		{name: "all down", tiers: []int{0, 1}, mask: AllMembers, want: -1,
			setup: func(e *env) { e.r.SetUp(0, false); e.r.SetUp(1, false) }},
		{name: "at capacity", tiers: []int{0, 1}, mask: AllMembers, want: 1, wantOK: true,
			setup: func(e *env) { e.r.members[0].capacity = 2; e.r.members[0].inFlight.Store(2) }},
		{name: "below capacity", tiers: []int{0, 1}, mask: AllMembers, want: 0, wantOK: true,
			setup: func(e *env) { e.r.members[0].capacity = 2; e.r.members[0].inFlight.Store(1) }},
		{name: "abandoned cap per member", tiers: []int{0, 1}, mask: AllMembers, want: 1, wantOK: true,
			cfg:   Config{MaxAbandonedPerMember: 2},
			setup: func(e *env) { e.r.members[0].abandoned.Store(2); e.r.members[0].hung.Store(2) }},
		{name: "abandoned during a stall: no cap", tiers: []int{0, 1}, mask: AllMembers, want: 0, wantOK: true,
			cfg:   Config{MaxAbandonedPerMember: 2},
			setup: func(e *env) { e.r.members[0].abandoned.Store(2) }},
		{name: "abandoned total cap", tiers: []int{0, 1}, mask: AllMembers, want: -1,
			cfg:   Config{MaxAbandonedTotal: 3},
			setup: func(e *env) { e.r.abandonedTotal.Store(3) }},
		{name: "breaker gate ahead", tiers: []int{0, 1}, mask: AllMembers, want: 1, wantOK: true,
			setup: func(e *env) { e.r.members[0].gate.Store(e.r.mono() + int64(time.Hour)) }},
		{name: "breaker gate passed", tiers: []int{0, 1}, mask: AllMembers, want: 0, wantOK: true,
			setup: func(e *env) { e.r.members[0].gate.Store(1) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg, members(tc.tiers...))
			if tc.setup != nil {
				tc.setup(e)
			}
			got, ok := e.r.Pick(tc.mask, tc.tried)
			require.Equal(t, tc.wantOK, ok)
			require.Equal(t, tc.want, got)
			// Undo fake load so cleanup does not wait for attempts that never existed.
			for _, m := range e.r.members {
				m.inFlight.Store(0)
			}
		})
	}
}

func TestPickPrefersFasterMember(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	e.r.Latency(0).Reset(10 * time.Millisecond)
	e.r.Latency(1).Reset(time.Millisecond)
	for range 200 {
		m, ok := e.r.Pick(AllMembers, 0)
		require.True(t, ok)
		require.Equal(t, 1, m, "with two candidates both are compared")
	}
}

func TestPickPrefersLessLoadedMember(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	e.r.members[0].inFlight.Store(1) // same latency, one call in flight: cost 2× the idle member's
	defer e.r.members[0].inFlight.Store(0)
	for range 200 {
		m, ok := e.r.Pick(AllMembers, 0)
		require.True(t, ok)
		require.Equal(t, 1, m)
	}
}

func TestPickP2CDistribution(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0, 0, 0, 1))
	for i := range 4 {
		e.r.Latency(i).Reset(time.Duration(i+1) * time.Millisecond)
	}
	counts := make([]int, 5)
	const n = 6000
	for range n {
		m, ok := e.r.Pick(AllMembers, 0)
		require.True(t, ok)
		counts[m]++
	}
	// Random pair among 4, cheaper wins: P = 3/6, 2/6, 1/6, 0; never tier 1.
	require.Zero(t, counts[3], "the costliest member never wins a pair")
	require.Zero(t, counts[4], "tier 1 is never used while tier 0 can serve")
	require.InDelta(t, 0.5, float64(counts[0])/n, 0.05)
	require.InDelta(t, 2.0/6, float64(counts[1])/n, 0.05)
	require.InDelta(t, 1.0/6, float64(counts[2])/n, 0.05)
}

func TestPickTiesAreSpread(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	counts := make([]int, 2)
	for range 2000 {
		m, _ := e.r.Pick(AllMembers, 0)
		counts[m]++
	}
	require.InDelta(t, 1000, counts[0], 150)
}

func TestPickDoesNotAllocate(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0, 1, 1))
	e.r.members[1].gate.Store(1) // exercise the gate path too
	require.Zero(t, testing.AllocsPerRun(1000, func() { _, _ = e.r.Pick(AllMembers, 0) }))
	require.Zero(t, testing.AllocsPerRun(1000, func() { _, _ = e.r.Pick(AllMembers, 1<<0|1<<1) }))
}
