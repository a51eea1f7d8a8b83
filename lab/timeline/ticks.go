package timeline

import (
	"math"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
)

// logMsTicks marks an axis whose values are log10 of milliseconds (the latency axes: a linear axis over
// logarithms, since plot.LogScale places a centred axis label by the linear midpoint): a labelled tick
// per decade (10µs, 1ms, 1s ...) and unlabelled ones in between; on a range too short for two decades,
// the 2s and 5s are labelled too.
type logMsTicks struct{}

func (logMsTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	labelled := 0
	for e := math.Floor(lo); e <= math.Ceil(hi); e++ {
		for i := 1.0; i < 10; i++ {
			if v := e + math.Log10(i); v >= lo-1e-9 && v <= hi+1e-9 {
				ticks = append(ticks, plot.Tick{Value: v})
				if i == 1 {
					labelled++
				}
			}
		}
	}
	for k, t := range ticks {
		e := math.Floor(t.Value + 1e-9)
		i := math.Round(math.Pow(10, t.Value-e))
		if i == 1 || (labelled < 2 && (i == 2 || i == 5)) {
			ticks[k].Label = fmtMs(i * math.Pow(10, e))
		}
	}
	return ticks
}

// fmtMs prints a duration given in milliseconds with its unit: 500µs, 2ms, 1.5s.
func fmtMs(ms float64) string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
	switch {
	case ms < 1:
		return f(ms*1000) + "µs"
	case ms < 1000:
		return f(ms) + "ms"
	}
	return f(ms/1000) + "s"
}

// unlabelled keeps another ticker's marks and drops their labels: the top panel shares its time axis with
// the bottom one, which carries the labels.
type unlabelled struct{ plot.Ticker }

func (u unlabelled) Ticks(lo, hi float64) []plot.Tick {
	ts := u.Ticker.Ticks(lo, hi)
	for i := range ts {
		ts[i].Label = ""
	}
	return ts
}

// ninesTicks marks a percentile axis on a nines scale (x = -log10(1-q)): 50%, 90%, 99%, 99.9% ...
type ninesTicks struct{}

func (ninesTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	add := func(x float64, label string) {
		if x >= lo-1e-9 && x <= hi+1e-9 {
			out = append(out, plot.Tick{Value: x, Label: label})
		}
	}
	add(0, "0%")
	add(nines(0.5), "50%")
	for x := 1.0; x <= hi+1e-9; x++ {
		add(x, strconv.FormatFloat(100*(1-math.Pow(10, -x)), 'f', max(int(x)-2, 0), 64)+"%")
	}
	return out
}

// nines is the position of quantile q on a nines scale.
func nines(q float64) float64 { return -math.Log10(1 - q) }

// plainTicks are plot.DefaultTicks labelled without trailing zeros, with thousands separators.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = plain(ts[i].Value)
		}
	}
	return ts
}

func plain(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		if v < 0 {
			return "-" + count(int(-v))
		}
		return count(int(v))
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// secondsTicks marks a time axis in seconds with round steps (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30 s, then
// minutes), about a dozen labelled ones whatever the run's length, and four or five unlabelled between.
type secondsTicks struct{}

// secondSteps are the labelled steps and the unlabelled ones between them.
var secondSteps = []struct{ major, minor float64 }{
	{0.01, 0.002}, {0.02, 0.005}, {0.05, 0.01}, {0.1, 0.02}, {0.2, 0.05}, {0.5, 0.1}, {1, 0.2}, {2, 0.5}, {5, 1},
	{10, 2}, {15, 5}, {30, 5}, {60, 10}, {120, 30}, {300, 60}, {600, 120}, {900, 300}, {1800, 300}, {3600, 600},
}

func (secondsTicks) Ticks(lo, hi float64) []plot.Tick {
	step := secondSteps[len(secondSteps)-1]
	for _, s := range slices.Backward(secondSteps) {
		if (hi-lo)/s.major <= 12 {
			step = s
		}
	}
	var ticks []plot.Tick
	for k := math.Ceil(lo/step.minor - 1e-9); k*step.minor <= hi+1e-9; k++ {
		v := math.Round(k*step.minor*1e6) / 1e6
		t := plot.Tick{Value: v}
		if r := v / step.major; math.Abs(r-math.Round(r)) < 1e-6 {
			t.Label = plain(v)
		}
		ticks = append(ticks, t)
	}
	return ticks
}
