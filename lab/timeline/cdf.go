package timeline

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"slices"
	"time"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one latency distribution for RenderCDF.
type Series struct {
	Label     string
	Latencies []time.Duration
	Group     string // series of one group share a colour (a slow-device pattern, say); "": the label
	Dashed    bool   // drawn dashed: the baseline of a pair, such as the run without hedging
}

// groupPalette colours the groups of RenderCDF in the order they first appear.
var groupPalette = []color.NRGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xd6, 0x27, 0x28, 0xff}, {0x2c, 0xa0, 0x2c, 0xff}, {0xff, 0x7f, 0x0e, 0xff},
	{0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff}, {0x17, 0xbe, 0xcf, 0xff}, {0x7f, 0x7f, 0x7f, 0xff},
}

// maxCurvePoints: a curve keeps a point where it has moved at least 1/maxCurvePoints of a nine to the
// right, and every point of the rarest tail, where each call is a step.
const maxCurvePoints = 2000

// RenderCDF draws latency distributions into dir/base.svg and dir/base.png (creating dir) and returns both
// paths: each series' latency (log scale) at each percentile, the percentile axis on a "nines" scale
// (50 %, 90 %, 99 %, 99.9 % equally spaced), so that the tail, where hedging makes its difference, gets as
// much room as the median. Series are drawn and listed in the order given.
func RenderCDF(title string, series []Series, dir, base string) (svgPath, pngPath string, err error) {
	svgPath, pngPath, err = writeBoth(dir, base, func(c canvas) { drawCDF(c, title, series) })
	if err != nil {
		return "", "", fmt.Errorf("timeline: rendering %q: %w", title, err)
	}
	return svgPath, pngPath, nil
}

func drawCDF(dc draw.Canvas, title string, series []Series) {
	body := header(dc, title, "latency of the calls (log scale) at each percentile; each step right on the percentile axis is ten times rarer")
	p := newPlot()
	p.Add(grid())
	groups := map[string]color.NRGBA{}
	lo, hi, xmax, total := math.Inf(1), math.Inf(-1), 1.0, 0
	for _, s := range series {
		g := cmp.Or(s.Group, s.Label)
		if _, ok := groups[g]; !ok {
			groups[g] = groupPalette[len(groups)%len(groupPalette)]
		}
		lat := slices.Clone(s.Latencies)
		slices.Sort(lat)
		total += len(lat)
		if len(lat) == 0 {
			p.Legend.Add(s.Label + " · no calls")
			continue
		}
		line, _ := plotter.NewLine(curve(lat))
		line.LineStyle = draw.LineStyle{Color: groups[g], Width: vg.Points(1.6)}
		if s.Dashed {
			line.LineStyle.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s · p50 %s · p99 %s · p99.9 %s · %s calls", s.Label, fmtMs(q(lat, 0.5)), fmtMs(q(lat, 0.99)),
			fmtMs(q(lat, 0.999)), count(len(lat))), line)
		lo, hi, xmax = min(lo, logMs(lat[0])), max(hi, logMs(lat[len(lat)-1])), max(xmax, nines(1-0.5/float64(len(lat))))
	}
	if total == 0 {
		lo, hi = 0, 3
	}
	p.X.Min, p.X.Max = 0, xmax
	p.X.Tick.Marker = ninesTicks{}
	p.X.Label.Text = "percentile (nines scale)"
	p.Y.Min, p.Y.Max = lo-0.15, hi+0.15
	p.Y.Tick.Marker = logMsTicks{}
	p.Y.Label.Text = "latency (log scale)"
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font = sans(9.5)
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), -vg.Points(6)
	p.Legend.ThumbnailWidth = vg.Points(28)
	p.Legend.Padding = vg.Points(4)
	p.Draw(body)
	if total == 0 {
		dataC := p.DataCanvas(body)
		sty := text.Style{Color: subtleText, Font: sans(14), XAlign: draw.XCenter, YAlign: draw.YCenter, Handler: p.TextHandler}
		dataC.FillText(sty, dataC.Center(), "no calls recorded")
	}
}

// curve is sorted latencies as points (nines of the quantile, log10 ms), the i-th of n at quantile
// (i+0.5)/n, thinned where they crowd.
func curve(lat []time.Duration) plotter.XYs {
	n := float64(len(lat))
	var out plotter.XYs
	last := math.Inf(-1)
	for i, l := range lat {
		x := nines((float64(i) + 0.5) / n)
		if x-last < 1.0/maxCurvePoints && i != len(lat)-1 {
			continue
		}
		out = append(out, plotter.XY{X: x, Y: logMs(l)})
		last = x
	}
	return out
}

// q is the nearest-rank quantile of sorted latencies, in milliseconds.
func q(sorted []time.Duration, p float64) float64 {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return float64(sorted[min(max(i, 0), len(sorted)-1)]) / 1e6
}
