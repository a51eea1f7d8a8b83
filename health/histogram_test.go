package health_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/health/fakeclock"
)

func TestHistogramNeedsSamples(t *testing.T) {
	h := health.NewLatencyHistogram(fakeclock.New(t0), 10*time.Second)
	for range health.MinQuantileSamples - 1 {
		h.Observe(time.Millisecond)
	}
	_, ok := h.Quantile(0.95)
	require.False(t, ok)
	h.Observe(time.Millisecond)
	q, ok := h.Quantile(0.95)
	require.True(t, ok)
	require.GreaterOrEqual(t, q, time.Millisecond)
	require.Less(t, q, 1100*time.Microsecond)
}

func TestHistogramQuantileAccuracy(t *testing.T) {
	h := health.NewLatencyHistogram(fakeclock.New(t0), 10*time.Second)
	// 1000 samples spread evenly over 1..100.9 ms.
	for i := range 1000 {
		h.Observe(time.Millisecond + time.Duration(i)*100*time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 50900 * time.Microsecond},
		{0.95, 95900 * time.Microsecond},
		{0.99, 99900 * time.Microsecond},
		{1, 100900 * time.Microsecond},
	} {
		got, ok := h.Quantile(tc.q)
		require.True(t, ok)
		// Reported as the bucket's upper edge: never early, at most one bucket (~9 %) late.
		require.GreaterOrEqual(t, got, tc.want, "q=%v", tc.q)
		require.LessOrEqual(t, float64(got), float64(tc.want)*1.1, "q=%v", tc.q)
	}
}

func TestHistogramRange(t *testing.T) {
	h := health.NewLatencyHistogram(fakeclock.New(t0), 10*time.Second)
	for range 50 {
		h.Observe(0)
	}
	q, ok := h.Quantile(1)
	require.True(t, ok)
	require.LessOrEqual(t, q, 11*time.Microsecond, "tiny values land in the first bucket")

	h2 := health.NewLatencyHistogram(fakeclock.New(t0), 10*time.Second)
	for range 50 {
		h2.Observe(time.Hour)
	}
	q, ok = h2.Quantile(0.5)
	require.True(t, ok)
	require.GreaterOrEqual(t, q, 30*time.Second, "huge values land in the last bucket")
	require.Less(t, q, 40*time.Second)
}

func TestHistogramDecay(t *testing.T) {
	clk := fakeclock.New(t0)
	h := health.NewLatencyHistogram(clk, 10*time.Second)
	for range 100 {
		h.Observe(time.Millisecond)
	}
	// One window later the old samples weigh half: 50 old (1 ms) vs 100 new (100 ms).
	clk.Advance(10 * time.Second)
	for range 100 {
		h.Observe(100 * time.Millisecond)
	}
	q, ok := h.Quantile(0.5)
	require.True(t, ok)
	require.GreaterOrEqual(t, q, 100*time.Millisecond)
	q, ok = h.Quantile(0.3)
	require.True(t, ok)
	require.Less(t, q, 2*time.Millisecond, "old samples still count, at half weight")

	// After many idle windows everything has faded away.
	clk.Advance(100 * time.Second)
	_, ok = h.Quantile(0.5)
	require.False(t, ok)
}

func TestHistogramAllocs(t *testing.T) {
	h := health.NewLatencyHistogram(health.RealClock(), time.Second)
	require.Zero(t, testing.AllocsPerRun(1000, func() { h.Observe(3 * time.Millisecond) }))
	require.Zero(t, testing.AllocsPerRun(1000, func() { _, _ = h.Quantile(0.95) }))
}

func TestHistogramConcurrent(t *testing.T) {
	clk := fakeclock.New(t0)
	h := health.NewLatencyHistogram(clk, time.Second)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				switch g {
				case 0:
					if i%100 == 0 {
						clk.Advance(300 * time.Millisecond)
					}
					_, _ = h.Quantile(0.95)
				default:
					h.Observe(5 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	q, ok := h.Quantile(0.95)
	require.True(t, ok)
	require.GreaterOrEqual(t, q, 5*time.Millisecond)
	require.Less(t, q, 6*time.Millisecond)
}
