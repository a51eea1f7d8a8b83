package health_test

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/health/fakeclock"
)

var t0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func TestPeakEWMA(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	type step struct {
		advance time.Duration
		rtt     time.Duration
		want    time.Duration
	}
	tests := []struct {
		name    string
		initial time.Duration
		steps   []step
	}{
		{"slower sample is taken at once (peak)", ms(5), []step{{0, ms(20), ms(20)}, {time.Hour, ms(30), ms(30)}}},
		{"no elapsed time: a faster sample does not move it", ms(20), []step{{0, ms(1), ms(20)}}},
		{"one decay period: weight 1/e", ms(20), []step{
			{10 * time.Second, ms(10), ms(20*math.Exp(-1) + 10*(1-math.Exp(-1)))},
		}},
		{"long idle: converges to the sample", ms(20), []step{{time.Hour, ms(2), ms(2)}}},
		{"decay then peak", ms(20), []step{
			{5 * time.Second, ms(0), ms(20 * math.Exp(-0.5))},
			{time.Millisecond, ms(50), ms(50)},
		}},
		{"negative rtt counts as zero", ms(1), []step{{time.Hour, -time.Second, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := fakeclock.New(t0)
			p := health.NewPeakEWMA(clk, 10*time.Second, tc.initial)
			require.Equal(t, tc.initial, p.Value())
			for i, s := range tc.steps {
				clk.Advance(s.advance)
				p.Observe(s.rtt)
				require.InDelta(t, float64(s.want), float64(p.Value()), float64(time.Microsecond), "step %d", i)
			}
		})
	}
}

func TestPeakEWMAReset(t *testing.T) {
	clk := fakeclock.New(t0)
	p := health.NewPeakEWMA(clk, 10*time.Second, 5*time.Millisecond)
	p.Observe(time.Second)
	require.Equal(t, time.Second, p.Value())
	clk.Advance(time.Hour)
	p.Reset(7 * time.Millisecond)
	require.Equal(t, 7*time.Millisecond, p.Value())
	// Reset also restarts the decay stamp: an immediate faster sample does not move the value.
	p.Observe(time.Millisecond)
	require.Equal(t, 7*time.Millisecond, p.Value())
}

func TestPeakEWMADefaults(t *testing.T) {
	p := health.NewPeakEWMA(nil, 0, -time.Second)
	require.Zero(t, p.Value())
	p.Observe(time.Millisecond)
	require.Equal(t, time.Millisecond, p.Value())
}

func TestPeakEWMAHotPathAllocs(t *testing.T) {
	p := health.NewPeakEWMA(health.RealClock(), time.Second, time.Millisecond)
	require.Zero(t, testing.AllocsPerRun(1000, func() { _ = p.Value() }))
	require.Zero(t, testing.AllocsPerRun(1000, func() { p.Observe(time.Millisecond) }))
}

func TestPeakEWMAConcurrent(t *testing.T) {
	clk := fakeclock.New(t0)
	p := health.NewPeakEWMA(clk, time.Second, time.Millisecond)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				if g == 0 {
					clk.Advance(time.Millisecond)
				}
				p.Observe(time.Duration(i%10+1) * time.Millisecond)
				v := p.Value()
				if v < 0 || v > 10*time.Millisecond {
					t.Errorf("value out of range: %v", v)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestPeakEWMAPenalty: a timeout (Penalize) is worked off by fast samples within seconds, not decays; a
// device that stalls again soon works each new penalty off four times more slowly, up to the normal decay;
// one that stayed clean for 3 decays is forgiven. A real slow sample is still a peak that decays normally.
func TestPeakEWMAPenalty(t *testing.T) {
	const (
		decay   = 10 * time.Second
		penalty = 50 * time.Millisecond
		fast    = time.Millisecond
	)
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	// after is the estimate one fast sample takes a 50 ms penalty to, secs after it, with decay tau.
	after := func(secs, tau float64) time.Duration { return ms(1 + 49*math.Exp(-secs/tau)) }
	type step struct {
		at      time.Duration // since the start
		penalty bool          // Penalize(penalty), else Observe(fast)
		want    time.Duration
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first stall: worked off with decay/10", []step{
			{0, true, penalty},
			{3 * time.Second, false, after(3, 1)},
			{5 * time.Second, false, ms(1 + (after(3, 1).Seconds()*1000-1)*math.Exp(-2))},
		}},
		{"timeouts of one stall are one episode", []step{
			{0, true, penalty},
			{100 * time.Millisecond, true, penalty},
			{200 * time.Millisecond, true, penalty},
			{3200 * time.Millisecond, false, after(3, 1)},
		}},
		{"second stall soon after: decay/10 × 4", []step{
			{0, true, penalty},
			{3 * time.Second, false, after(3, 1)},
			{6 * time.Second, false, ms(1 + (after(3, 1).Seconds()*1000-1)*math.Exp(-3))},
			{10 * time.Second, true, penalty},
			{13 * time.Second, false, after(3, 4)},
		}},
		{"a stall before the last one was worked off is a repeat too", []step{
			{0, true, penalty},
			{3 * time.Second, false, after(3, 1)},
			{10 * time.Second, true, penalty},
			{40 * time.Second, false, after(30, 4)},
		}},
		{"third stall soon after: the normal decay", []step{
			{0, true, penalty},
			{3 * time.Second, false, after(3, 1)},
			{10 * time.Second, true, penalty},
			{13 * time.Second, false, after(3, 4)},
			{20 * time.Second, true, penalty},
			{23 * time.Second, false, after(3, 10)},
		}},
		{"fourth: still the normal decay", []step{
			{0, true, penalty},
			{1 * time.Second, false, after(1, 1)},
			{2 * time.Second, true, penalty},
			{3 * time.Second, false, after(1, 4)},
			{4 * time.Second, true, penalty},
			{5 * time.Second, false, after(1, 10)},
			{6 * time.Second, true, penalty},
			{7 * time.Second, false, after(1, 10)},
		}},
		{"forgiven after 3 decays", []step{
			{0, true, penalty},
			{3 * time.Second, false, after(3, 1)},
			{3*decay + time.Second, true, penalty},
			{3*decay + 4*time.Second, false, after(3, 1)},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := fakeclock.New(t0)
			p := health.NewPeakEWMA(clk, decay, 5*time.Millisecond)
			for i, s := range tc.steps {
				clk.Set(t0.Add(s.at))
				if s.penalty {
					p.Penalize(penalty)
				} else {
					p.Observe(fast)
				}
				require.InDelta(t, float64(s.want), float64(p.Value()), float64(time.Microsecond), "step %d", i)
			}
		})
	}
	t.Run("a slow sample is a real peak, not a penalty", func(t *testing.T) {
		clk := fakeclock.New(t0)
		p := health.NewPeakEWMA(clk, decay, 5*time.Millisecond)
		p.Penalize(penalty)
		clk.Advance(time.Second)
		p.Observe(2 * penalty) // slower than the penalty: measured
		clk.Advance(3 * time.Second)
		p.Observe(fast)
		require.InDelta(t, float64(ms(1+99*math.Exp(-0.3))), float64(p.Value()), float64(time.Microsecond))
	})
	t.Run("reset forgets the stalls too", func(t *testing.T) {
		clk := fakeclock.New(t0)
		p := health.NewPeakEWMA(clk, decay, 5*time.Millisecond)
		p.Penalize(penalty)
		clk.Advance(time.Second)
		p.Reset(5 * time.Millisecond) // a new device (re-initialised)
		clk.Advance(time.Second)
		p.Penalize(penalty) // 2 s after the first stall, but the first of the new device
		clk.Advance(3 * time.Second)
		p.Observe(fast)
		require.InDelta(t, float64(after(3, 1)), float64(p.Value()), float64(time.Microsecond))
	})
}
