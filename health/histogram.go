package health

import (
	"math"
	"sync/atomic"
	"time"
)

// Histogram geometry: log-spaced buckets from 10 µs to 30 s, 8 per doubling (each bucket ~9 % wide),
// which is finer than any hedging decision needs and small enough (≈1.4 KiB) to keep one per device.
const (
	histMin       = 10 * time.Microsecond
	histMax       = 30 * time.Second
	histPerOctave = 8
	// MinQuantileSamples is how many (decayed) samples Quantile needs before it answers.
	MinQuantileSamples = 20
)

var histBuckets = int(math.Ceil(math.Log2(float64(histMax)/float64(histMin))*histPerOctave)) + 1

// LatencyHistogram estimates latency quantiles (for hedging delays) over recent traffic. All buckets are
// halved at every window boundary, so old samples fade with a half-life of one window while the estimate
// never drops to nothing at a boundary. Observe and Quantile are lock-free and allocation-free.
type LatencyHistogram struct {
	clock   Clock
	window  time.Duration
	origin  time.Time
	epoch   atomic.Int64 // number of the window the buckets were last decayed to
	buckets []atomic.Uint64
}

// NewLatencyHistogram returns an empty histogram decayed every window (10 s when window <= 0).
// A nil clock means RealClock.
func NewLatencyHistogram(clock Clock, window time.Duration) *LatencyHistogram {
	if clock == nil {
		clock = RealClock()
	}
	if window <= 0 {
		window = 10 * time.Second
	}
	return &LatencyHistogram{
		clock:   clock,
		window:  window,
		origin:  clock.Now(),
		buckets: make([]atomic.Uint64, histBuckets),
	}
}

func bucketOf(d time.Duration) int {
	if d <= histMin {
		return 0
	}
	i := int(math.Log2(float64(d)/float64(histMin)) * histPerOctave)
	return min(i, histBuckets-1)
}

// bucketUpper is the upper edge of bucket i: Quantile reports it so the hedge delay errs on the late side.
func bucketUpper(i int) time.Duration {
	return time.Duration(float64(histMin) * math.Exp2(float64(i+1)/histPerOctave))
}

// decay halves every bucket once per window boundary crossed since the last call. One caller wins the
// CAS and does the work; concurrent Observes may land before or after the halving, which only blurs the
// boundary by a few samples.
func (h *LatencyHistogram) decay() {
	e := int64(h.clock.Now().Sub(h.origin) / h.window)
	cur := h.epoch.Load()
	if e <= cur || !h.epoch.CompareAndSwap(cur, e) {
		return
	}
	shift := uint(min(e-cur, 63))
	for i := range h.buckets {
		b := &h.buckets[i]
		for {
			v := b.Load()
			if v == 0 || b.CompareAndSwap(v, v>>shift) {
				break
			}
		}
	}
}

// Observe records one latency.
func (h *LatencyHistogram) Observe(d time.Duration) {
	h.decay()
	h.buckets[bucketOf(d)].Add(1)
}

// Quantile returns the q-quantile (0 < q <= 1) of recent latencies, rounded up to its bucket's upper
// edge, and false when there are fewer than MinQuantileSamples recent samples.
func (h *LatencyHistogram) Quantile(q float64) (time.Duration, bool) {
	h.decay()
	var total uint64
	for i := range h.buckets {
		total += h.buckets[i].Load()
	}
	if total < MinQuantileSamples {
		return 0, false
	}
	q = min(max(q, 0), 1)
	target := uint64(math.Ceil(q * float64(total)))
	target = max(target, 1)
	var cum uint64
	last := 0
	for i := range h.buckets {
		v := h.buckets[i].Load()
		if v == 0 {
			continue
		}
		last = i
		cum += v
		if cum >= target {
			return bucketUpper(i), true
		}
	}
	// A concurrent decay shrank the buckets between the two passes: the highest sample seen is the answer.
	return bucketUpper(last), true
}
