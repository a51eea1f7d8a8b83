package timeline

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStyles(t *testing.T) {
	local := map[string]bool{"eastus-2": true, "eastus-1": true}
	a := styles([]string{"westus-2", "eastus-2", "westus-1", "eastus-1"}, local)
	b := styles([]string{"eastus-1", "westus-1", "eastus-2", "westus-2"}, local)
	assert.Equal(t, a, b, "the same devices in another order get the same colours")
	names := []string{}
	seen := map[style]bool{}
	for _, s := range a {
		names = append(names, s.name)
		assert.False(t, seen[style{color: s.color, shape: s.shape}], "%s shares colour and glyph", s.name)
		seen[style{color: s.color, shape: s.shape}] = true
		if s.local {
			assert.Contains(t, localPalette, s.color, "%s is local: a blue or green", s.name)
		} else {
			assert.Contains(t, drPalette, s.color, "%s is DR: a red or orange", s.name)
		}
	}
	assert.Equal(t, []string{"eastus-1", "eastus-2", "westus-1", "westus-2"}, names, "local first, then DR, by name")

	many := make([]string, 20)
	for i := range many {
		many[i] = string(rune('a' + i))
	}
	seen = map[style]bool{}
	for _, s := range styles(many, nil) {
		k := style{color: s.color, shape: s.shape}
		assert.False(t, seen[k], "%s: more devices than colours still differ by glyph", s.name)
		seen[k] = true
	}
}

func TestKeep(t *testing.T) {
	const n, limit = 10_000, 1_000
	samples := make([]Sample, n)
	for i := range samples {
		samples[i] = Sample{Start: t0.Add(time.Duration(i) * time.Millisecond), Latency: time.Duration(i%997) * time.Microsecond, Device: "a"}
		if i%100 == 7 {
			samples[i].Err = true
		}
	}
	got := keep(samples, limit)
	assert.Len(t, got, limit)
	assert.Equal(t, got, keep(samples, limit), "deterministic")
	kept := map[int]bool{}
	for _, i := range got {
		assert.False(t, kept[i], "sample %d kept twice", i)
		kept[i] = true
	}
	var ok []int
	for i, s := range samples {
		if s.Err {
			assert.True(t, kept[i], "failed call %d kept", i)
		} else {
			ok = append(ok, i)
		}
	}
	slices.SortStableFunc(ok, func(a, b int) int { return int(samples[b].Latency - samples[a].Latency) })
	for _, i := range ok[:len(ok)/100] {
		assert.True(t, kept[i], "one of the slowest 1%%, sample %d (%v), kept", i, samples[i].Latency)
	}
	assert.Len(t, keep(samples[:limit], limit), limit, "all kept up to the limit")
}

func TestBucketFor(t *testing.T) {
	tests := []struct {
		span, want time.Duration
	}{
		{0, 10 * time.Millisecond},
		{time.Second, 20 * time.Millisecond},
		{6 * time.Second, 100 * time.Millisecond},
		{12 * time.Second, 250 * time.Millisecond},
		{30 * time.Second, 500 * time.Millisecond},
		{59 * time.Second, 1000 * time.Millisecond},
		{5 * time.Minute, time.Second},
		{time.Hour, 6 * time.Second},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, bucketFor(tc.span), "span %v", tc.span)
	}
}

func TestPrepareRates(t *testing.T) {
	run := failoverRun(400)
	pr := prepare(&run, MaxPoints)
	require.Equal(t, 250*time.Millisecond, pr.bucket)
	total := 0.0
	for _, layer := range pr.rates {
		for b, r := range layer {
			total += r * (pr.edges[b+1] - pr.edges[b])
		}
	}
	assert.InDelta(t, len(run.Samples), total, 0.5, "every call counted once")
	// 400 calls/s in every full bucket, failed ones included.
	for b := range len(pr.edges) - 2 {
		sum := 0.0
		for _, layer := range pr.rates {
			sum += layer[b]
		}
		assert.InDelta(t, 400, sum, 8, "bucket %d", b)
	}
	assert.Equal(t, 30, pr.failed)
	assert.Equal(t, len(run.Samples), pr.shown)
	assert.Equal(t, 0.0, pr.x0)
}

func TestSecondsTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		want   []string
	}{
		{0, 1, []string{"0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1"}},
		{0, 5.6, []string{"0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5", "5.5"}},
		{0, 12, []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}},
		{0, 100, []string{"0", "10", "20", "30", "40", "50", "60", "70", "80", "90", "100"}},
		{-2, 20, []string{"-2", "0", "2", "4", "6", "8", "10", "12", "14", "16", "18", "20"}},
	}
	for _, tc := range tests {
		var got []string
		for _, tk := range (secondsTicks{}).Ticks(tc.lo, tc.hi) {
			if tk.Label != "" {
				got = append(got, tk.Label)
			}
		}
		assert.Equal(t, tc.want, got, "%v..%v", tc.lo, tc.hi)
	}
}
