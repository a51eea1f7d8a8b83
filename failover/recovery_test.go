package failover

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestStallRecovery: a member whose calls timed out in a short stall is picked again within seconds of
// fast probe samples (what pkcs11ha feeds into Latency), not after several EWMA decays; a member that
// stalls again soon is not pulled straight back in: each repeat keeps it out longer.
func TestStallRecovery(t *testing.T) {
	const probeEvery = time.Second
	e := newEnv(t, Config{}, members(0, 0))
	e.r.Latency(1).Reset(2 * time.Millisecond) // the partner, idle: cost 2 ms

	stall := func() {
		t.Helper()
		e.fakes[0].hold.Store(true)
		res := e.goDo(context.Background(), 1<<0)
		e.entered(0)
		e.blockUntil(1)
		e.clk.Advance(50 * time.Millisecond) // the attempt timeout
		require.ErrorIs(t, recv(t, res).err, ErrNoMember)
		e.fakes[0].hold.Store(false)
		e.fakes[0].release <- struct{}{}
		e.waitIdle(0)
		m, ok := e.r.Pick(AllMembers, 0)
		require.True(t, ok)
		require.Equal(t, 1, m, "right after the stall, the partner takes the calls")
	}
	// backAfter feeds a fast probe sample every probeEvery until member 0 is picked again, and returns how
	// long that took (probe samples only: no call reaches member 0 while its partner is cheaper).
	backAfter := func(limit time.Duration) time.Duration {
		t.Helper()
		for waited := probeEvery; waited <= limit; waited += probeEvery {
			e.clk.Advance(probeEvery)
			e.r.Latency(0).Observe(time.Millisecond)
			if m, _ := e.r.Pick(AllMembers, 0); m == 0 {
				// Back in its share: the next call goes to it (and its success clears the breaker's
				// run of timeouts).
				v, _, err := e.do(AllMembers)
				require.NoError(t, err)
				require.Equal(t, 0, v)
				return waited
			}
		}
		return limit + probeEvery
	}

	stall()
	first := backAfter(time.Minute)
	require.LessOrEqual(t, first, 5*time.Second, "a first stall costs the member seconds of its share")
	stall()
	second := backAfter(time.Minute)
	require.Greater(t, second, 2*first, "stalled again %v later: kept out longer", first)
	stall()
	third := backAfter(2 * time.Minute)
	require.Greater(t, third, second, "a third stall in a row: longer still")
	require.LessOrEqual(t, third, time.Minute, "but not exiled")

	// A stall long after the last one is a first offence again.
	e.clk.Advance(time.Minute)
	stall()
	require.Equal(t, first, backAfter(time.Minute))
	t.Logf("back after %v, %v, %v; forgiven: %v", first, second, third, first)
}

// TestObserveProbe: a probe round trip is a latency sample, unless it is slower than the attempt timeout:
// then it spanned a stall (a paused server) and is the same penalty as a timed-out attempt, worked off by
// the next fast probes within seconds rather than a peak that lasts several decays.
func TestObserveProbe(t *testing.T) {
	tests := []struct {
		name      string
		rtt       time.Duration
		want      time.Duration // right after
		wantAfter time.Duration // after 3 s and a 1 ms probe, within 0.1 ms
	}{
		{"sample", 20 * time.Millisecond, 20 * time.Millisecond, 20*time.Millisecond*74/100 + time.Millisecond*26/100},
		{"stall", 300 * time.Millisecond, 50 * time.Millisecond, time.Millisecond + 49*time.Millisecond/20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{}, members(0))
			e.r.ObserveProbe(0, tc.rtt)
			require.Equal(t, tc.want, e.r.Latency(0).Value())
			e.clk.Advance(3 * time.Second)
			e.r.ObserveProbe(0, time.Millisecond)
			require.InDelta(t, float64(tc.wantAfter), float64(e.r.Latency(0).Value()), float64(100*time.Microsecond))
		})
	}
}
