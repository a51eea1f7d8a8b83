package timeline

import (
	"math"
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

// rateTicks are plot.DefaultTicks labelled without trailing zeros, with thousands separators.
type rateTicks struct{}

func (rateTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label == "" {
			continue
		}
		if v := ts[i].Value; v == math.Trunc(v) && math.Abs(v) < 1e15 {
			ts[i].Label = count(int(v))
		} else {
			ts[i].Label = strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	return ts
}
