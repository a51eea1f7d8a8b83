package timeline

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hedgeSeries are a slow-device comparison: without hedging 1 call in 20 waits for the slow device
// (~30 ms), with hedging a second attempt after ~5 ms caps them.
func hedgeSeries(n int) []Series {
	rng := rand.New(rand.NewPCG(3, 4))
	var off, on []time.Duration
	for range n {
		base := time.Duration(1.5e6 * (1 + rng.ExpFloat64()/4))
		slow := rng.IntN(20) == 0
		o := base
		if slow {
			o = 30*time.Millisecond + base
		}
		off = append(off, o)
		h := base
		if slow {
			h = 5*time.Millisecond + base
		}
		on = append(on, h)
	}
	return []Series{
		{Label: "onset, no hedging", Group: "onset", Dashed: true, Latencies: off},
		{Label: "onset, hedging", Group: "onset", Latencies: on},
	}
}

func TestRenderCDF(t *testing.T) {
	tests := []struct {
		name     string
		series   []Series
		wantText []string
	}{
		{"hedging", hedgeSeries(20_000), []string{"slow device", "onset, no hedging · p50", "onset, hedging · p50", "99.9%",
			"20,000 calls"}},
		{"empty", nil, []string{"no calls recorded"}},
		{"one-empty-series", []Series{{Label: "never ran"}, {Label: "one call", Latencies: []time.Duration{time.Millisecond}}},
			[]string{"never ran · no calls", "one call · p50 1ms"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svgPath, pngPath, err := RenderCDF("slow device: "+tc.name, tc.series, outDir(t), "cdf-"+tc.name)
			require.NoError(t, err)
			texts := svgTexts(t, svgPath)
			for _, w := range tc.wantText {
				assert.Contains(t, texts, w)
			}
			checkPNG(t, pngPath)
		})
	}
}

func TestCurve(t *testing.T) {
	lat := make([]time.Duration, 100_000)
	for i := range lat {
		lat[i] = time.Duration(i+1) * time.Microsecond
	}
	c := curve(lat)
	assert.LessOrEqual(t, len(c), 3*maxCurvePoints, "thinned")
	assert.InDelta(t, 0, c[0].X, 1e-4, "starts at the 0th percentile")
	assert.InDelta(t, logMs(lat[len(lat)-1]), c[len(c)-1].Y, 1e-12, "ends with the slowest call")
	for i := 1; i < len(c); i++ {
		require.Greater(t, c[i].X, c[i-1].X)
		require.GreaterOrEqual(t, c[i].Y, c[i-1].Y)
	}
	// p99 of 1..100,000 µs is 99 ms: the curve passes 99 ms at two nines.
	for i := 1; i < len(c); i++ {
		if c[i].X >= 2 {
			assert.InDelta(t, logMs(99*time.Millisecond), c[i].Y, 0.01)
			break
		}
	}
}

func TestLogMsTicks(t *testing.T) {
	labels := func(lo, hi time.Duration) []string {
		var out []string
		for _, tk := range (logMsTicks{}).Ticks(logMs(lo), logMs(hi)) {
			if tk.Label != "" {
				out = append(out, tk.Label)
			}
		}
		return out
	}
	tests := []struct {
		lo, hi time.Duration
		want   []string
	}{
		{100 * time.Microsecond, 2 * time.Second, []string{"100µs", "1ms", "10ms", "100ms", "1s"}},
		{1500 * time.Microsecond, 8 * time.Millisecond, []string{"2ms", "5ms"}},
		{900 * time.Microsecond, 8 * time.Millisecond, []string{"1ms", "2ms", "5ms"}},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, labels(tc.lo, tc.hi), "%v..%v", tc.lo, tc.hi)
	}
}
