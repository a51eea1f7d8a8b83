package bench

import (
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Latencies are one cell's operation latencies in nanoseconds.
type Latencies []int64

// Quantile returns the q-quantile (nearest rank) of ls, sorting ls in place.
func (ls Latencies) Quantile(q float64) time.Duration {
	if len(ls) == 0 {
		return 0
	}
	if !slices.IsSorted(ls) {
		slices.Sort(ls)
	}
	i := int(math.Ceil(q*float64(len(ls)))) - 1
	return time.Duration(ls[min(max(i, 0), len(ls)-1)])
}

// median returns the median of xs (the mean of the middle two for an even count); NaN when empty.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

// loadAvg returns the 1-minute load average (NaN when /proc is not there).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// loadRange tracks the 1-minute load averages seen while a row of the table was measured.
type loadRange struct{ lo, hi float64 }

func (r *loadRange) add(v float64) {
	if math.IsNaN(v) {
		return
	}
	if r.hi == 0 && r.lo == 0 {
		r.lo, r.hi = v, v
		return
	}
	r.lo, r.hi = min(r.lo, v), max(r.hi, v)
}

func (r loadRange) String() string {
	if r.lo == 0 && r.hi == 0 {
		return "-"
	}
	if math.Abs(r.hi-r.lo) < 0.005 {
		return strconv.FormatFloat(r.lo, 'f', 2, 64)
	}
	return strconv.FormatFloat(r.lo, 'f', 2, 64) + "–" + strconv.FormatFloat(r.hi, 'f', 2, 64)
}

// fmtDur prints a latency with three significant digits in µs or ms.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return strconv.FormatFloat(float64(d)/1e3, 'f', 0, 64) + "µs"
	case d < 10*time.Millisecond:
		return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + "ms"
	case d < 100*time.Millisecond:
		return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(float64(d)/1e6, 'f', 0, 64) + "ms"
}

// fmtRate prints ops/s with a thousands separator.
func fmtRate(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
