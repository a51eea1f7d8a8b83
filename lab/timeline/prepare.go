package timeline

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// minLatency is where calls faster than it (or with no latency recorded) are drawn on the log axis.
const minLatency = time.Microsecond

// prepared is a run reduced to what the panels draw; times are seconds since the origin, latencies
// log10 of milliseconds.
type prepared struct {
	origin     time.Time
	x0, x1     float64
	devs       []style
	dots       []dot // the calls the top panel shows, in the order they started
	served     []int // per device: every successful call
	calls      int
	failed     int
	shown      int
	lat0, lat1 float64 // the top panel's latency range, log10 ms
	bucket     time.Duration
	edges      []float64   // bucket boundaries: len(rates[i]) + 1 of them
	rates      [][]float64 // per device in devs, then one for failed calls: calls/s per bucket
}

// dot is one call in the top panel: seconds since the origin, log10 ms, index of its device in devs
// (-1: failed).
type dot struct {
	x, y float64
	dev  int
}

func prepare(run *Run, limit int) *prepared {
	pr := &prepared{origin: origin(run), calls: len(run.Samples)}
	pr.x0, pr.x1 = pr.xRange(run)
	pr.devs = styles(devices(run), run.Local)
	index := make(map[string]int, len(pr.devs))
	for i, d := range pr.devs {
		index[d.name] = i
	}
	pr.served = make([]int, len(pr.devs))
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range run.Samples {
		if s.Err {
			pr.failed++
		} else {
			pr.served[index[s.Device]]++
		}
		y := logMs(s.Latency)
		lo, hi = min(lo, y), max(hi, y)
	}
	for _, i := range keep(run.Samples, limit) {
		s := run.Samples[i]
		d := dot{x: pr.sec(s.Start), y: logMs(s.Latency), dev: -1}
		if !s.Err {
			d.dev = index[s.Device]
		}
		pr.dots = append(pr.dots, d)
	}
	pr.shown = len(pr.dots)
	// Drawn in start order, so that where devices share a stretch of time their dots mix instead of the
	// last one drawn hiding the others.
	slices.SortStableFunc(pr.dots, func(a, b dot) int { return cmp.Compare(a.x, b.x) })
	if len(run.Samples) == 0 {
		lo, hi = 0, 3 // 1ms to 1s
	}
	// Half a decade of room under the fastest call, for the band labels, and some over the slowest.
	pr.lat0 = math.Floor(lo - 0.5)
	pr.lat1 = hi + 0.25
	pr.bucket = bucketFor(time.Duration((pr.x1 - pr.x0) * float64(time.Second)))
	pr.edges, pr.rates = pr.bucketRates(run.Samples, index)
	return pr
}

func (pr *prepared) sec(t time.Time) float64 { return t.Sub(pr.origin).Seconds() }

func logMs(d time.Duration) float64 { return math.Log10(float64(max(d, minLatency)) / 1e6) }

// origin is Run.Origin, or else the earliest sample, marker or band.
func origin(run *Run) time.Time {
	if !run.Origin.IsZero() {
		return run.Origin
	}
	var o time.Time
	early := func(t time.Time) {
		if o.IsZero() || t.Before(o) {
			o = t
		}
	}
	for _, s := range run.Samples {
		early(s.Start)
	}
	for _, m := range run.Markers {
		early(m.At)
	}
	for _, b := range run.Bands {
		early(b.From)
	}
	return o
}

// xRange spans every sample, marker and band, from the origin on; at least one second.
func (pr *prepared) xRange(run *Run) (x0, x1 float64) {
	x0, x1 = math.Inf(1), math.Inf(-1)
	see := func(t time.Time) { x := pr.sec(t); x0, x1 = min(x0, x), max(x1, x) }
	for _, s := range run.Samples {
		see(s.Start)
	}
	for _, m := range run.Markers {
		see(m.At)
	}
	for _, b := range run.Bands {
		see(b.From)
		see(b.To)
	}
	if math.IsInf(x0, 1) {
		return 0, 1
	}
	x0 = min(x0, 0)
	return x0, max(x1, x0+1)
}

// devices are the devices that served a call and those Run.Local names.
func devices(run *Run) []string {
	seen := map[string]bool{}
	var out []string
	add := func(d string) {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	for _, s := range run.Samples {
		if !s.Err {
			add(s.Device)
		}
	}
	for d := range run.Local {
		add(d)
	}
	return out
}

// keep returns the indexes of the samples the top panel draws: all of them up to limit; beyond it every
// failed call and the slowest 1 % of the successful ones (at most half the limit, evenly thinned), and an
// even share of the rest in time order. The choice depends on the samples alone.
func keep(samples []Sample, limit int) []int {
	all := make([]int, len(samples))
	for i := range all {
		all[i] = i
	}
	if len(samples) <= limit {
		return all
	}
	var must, ok []int
	for _, i := range all {
		if samples[i].Err {
			must = append(must, i)
		} else {
			ok = append(ok, i)
		}
	}
	slices.SortStableFunc(ok, func(a, b int) int { return cmp.Compare(samples[b].Latency, samples[a].Latency) })
	tail := len(ok) / 100
	must = append(must, ok[:tail]...)
	rest := ok[tail:]
	byStart := func(a, b int) int { return cmp.Or(samples[a].Start.Compare(samples[b].Start), cmp.Compare(a, b)) }
	slices.SortFunc(must, byStart)
	slices.SortFunc(rest, byStart)
	must = thin(must, limit/2)
	return append(must, thin(rest, limit-len(must))...)
}

// thin keeps n of idx, evenly spread.
func thin(idx []int, n int) []int {
	if len(idx) <= n {
		return idx
	}
	out := make([]int, n)
	for i := range out {
		out[i] = idx[i*len(idx)/n]
	}
	return out
}

// bucketFor is the width of the calls-per-second buckets: one second for runs of a minute or more (a
// bucket per 1/600 of the run, in whole seconds, past ten minutes); for shorter runs the largest round
// width that still gives about 40 buckets, so that a few seconds of chaos show their shape.
func bucketFor(span time.Duration) time.Duration {
	switch {
	case span > 10*time.Minute:
		return (span/600 + time.Second - 1).Truncate(time.Second)
	case span >= time.Minute:
		return time.Second
	}
	b := 10 * time.Millisecond
	for _, v := range []time.Duration{20, 50, 100, 200, 250, 500, 1000} {
		if v*time.Millisecond <= span/40 {
			b = v * time.Millisecond
		}
	}
	return b
}

// bucketRates counts the calls started in each bucket, per device and failed, as calls per second. The
// last bucket ends with the run; one the run covers by less than half is dropped rather than shown as a
// noisy spike or dip.
func (pr *prepared) bucketRates(samples []Sample, index map[string]int) (edges []float64, rates [][]float64) {
	w := pr.bucket.Seconds()
	n := int(math.Ceil((pr.x1 - pr.x0) / w))
	if float64(n)*w-(pr.x1-pr.x0) > w/2 && n > 1 {
		n--
	}
	n = max(n, 1)
	edges = make([]float64, n+1)
	for i := range edges {
		edges[i] = pr.x0 + float64(i)*w
	}
	edges[n] = min(edges[n], pr.x1) // the last bucket ends with the run
	rates = make([][]float64, len(pr.devs)+1)
	for i := range rates {
		rates[i] = make([]float64, n)
	}
	for _, s := range samples {
		b := int((pr.sec(s.Start) - pr.x0) / w)
		if b < 0 || b >= n {
			continue
		}
		layer := len(pr.devs)
		if !s.Err {
			layer = index[s.Device]
		}
		rates[layer][b] += 1 / (edges[b+1] - edges[b])
	}
	return edges, rates
}
