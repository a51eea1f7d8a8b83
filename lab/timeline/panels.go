package timeline

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// newPlot is a plot with this package's fonts and a light grid.
func newPlot() *plot.Plot {
	p := plot.New()
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = sans(10)
		a.Tick.Label.Font = sans(9)
	}
	return p
}

func grid() *plotter.Grid {
	g := plotter.NewGrid()
	g.Vertical = draw.LineStyle{Color: gridColor, Width: vg.Points(0.5)}
	g.Horizontal = g.Vertical
	return g
}

// topPlot: every call's latency on a log scale, a dot per successful call in its device's colour, a
// cross per failed call.
func topPlot(pr *prepared, run *Run) *plot.Plot {
	p := newPlot()
	p.Add(bandLayer{bands: run.Bands, pr: pr, showLabels: true}, grid())
	p.Add(dotLayer{pr})
	p.Add(newMarkerLayer(run, pr, true))
	p.X.Min, p.X.Max = pr.x0, pr.x1
	p.X.Tick.Marker = unlabelled{secondsTicks{}}
	p.Y.Min, p.Y.Max = pr.lat0, pr.lat1
	p.Y.Tick.Marker = logMsTicks{}
	p.Y.Label.Text = "latency of each call (log scale)"
	return p
}

// bottomPlot: calls per second per device, stacked in the order of the legend, failed calls on top.
func bottomPlot(pr *prepared, run *Run) *plot.Plot {
	p := newPlot()
	p.Add(bandLayer{bands: run.Bands, pr: pr}, grid())
	n := len(pr.edges) - 1
	below := make([]float64, n)
	top := 0.0
	for layer, rates := range pr.rates {
		c := color.Color(errorRateColor)
		if layer < len(pr.devs) {
			c = withAlpha(pr.devs[layer].color, 0xd8)
		}
		var ring plotter.XYs
		for b := range n { // upper edge, left to right, as steps
			ring = append(ring, plotter.XY{X: pr.edges[b], Y: below[b] + rates[b]}, plotter.XY{X: pr.edges[b+1], Y: below[b] + rates[b]})
		}
		for b := n - 1; b >= 0; b-- { // lower edge back
			ring = append(ring, plotter.XY{X: pr.edges[b+1], Y: below[b]}, plotter.XY{X: pr.edges[b], Y: below[b]})
		}
		empty := true
		for b := range n {
			empty = empty && rates[b] == 0
			below[b] += rates[b]
			top = max(top, below[b])
		}
		if empty {
			continue
		}
		poly, _ := plotter.NewPolygon(ring)
		poly.Color = c
		poly.LineStyle.Width = 0
		p.Add(poly)
	}
	p.Add(newMarkerLayer(run, pr, false))
	p.X.Min, p.X.Max = pr.x0, pr.x1
	p.X.Tick.Marker = secondsTicks{}
	p.X.Label.Text = "seconds since the start"
	if !pr.origin.IsZero() {
		p.X.Label.Text += pr.origin.Format(" (15:04:05 MST)")
	}
	p.Y.Min, p.Y.Max = 0, max(top*1.08, 1)
	p.Y.Tick.Marker = plainTicks{}
	p.Y.Label.Text = fmt.Sprintf("calls/s, stacked (%v buckets)", pr.bucket)
	return p
}

// drawTimeline lays the picture out: title and subtitle on top; the two panels on the left, their data
// areas aligned on the same time axis; the legend on the right.
func drawTimeline(dc draw.Canvas, pr *prepared, run *Run) {
	body := header(dc, run.Title, subtitle(pr))
	main := draw.Crop(body, 0, -legendW, 0, 0)
	side := draw.Crop(body, body.Max.X-body.Min.X-legendW+vg.Points(12), 0, 0, 0)
	h := main.Max.Y - main.Min.Y
	topC := draw.Crop(main, 0, 0, 0.36*h, 0)
	botC := draw.Crop(main, 0, 0, 0, -0.64*h)
	top, bottom := topPlot(pr, run), bottomPlot(pr, run)
	alignX(&topC, top, &botC, bottom)
	top.Draw(topC)
	bottom.Draw(botC)
	if pr.calls == 0 {
		dataC := top.DataCanvas(topC)
		sty := text.Style{Color: subtleText, Font: sans(14), XAlign: draw.XCenter, YAlign: draw.YCenter, Handler: top.TextHandler}
		dataC.FillText(sty, dataC.Center(), "no calls recorded")
	}
	legend(side, pr, run)
}

// alignX narrows the wider of two stacked panels' data areas so that both share the same x extent.
func alignX(c1 *draw.Canvas, p1 *plot.Plot, c2 *draw.Canvas, p2 *plot.Plot) {
	d1, d2 := p1.DataCanvas(*c1), p2.DataCanvas(*c2)
	left := max(d1.Min.X-c1.Min.X, d2.Min.X-c2.Min.X)
	right := max(c1.Max.X-d1.Max.X, c2.Max.X-d2.Max.X)
	c1.Min.X += left - (d1.Min.X - c1.Min.X)
	c2.Min.X += left - (d2.Min.X - c2.Min.X)
	c1.Max.X -= right - (c1.Max.X - d1.Max.X)
	c2.Max.X -= right - (c2.Max.X - d2.Max.X)
}

// header fills the background, draws the title and subtitle and returns the canvas left below them.
func header(dc draw.Canvas, title, sub string) draw.Canvas {
	dc.FillPolygon(color.White, box(dc.Min.X, dc.Min.Y, dc.Max.X, dc.Max.Y))
	hdlr := plot.DefaultTextHandler
	ts := text.Style{Color: color.Black, Font: sansBold(14), XAlign: draw.XLeft, YAlign: draw.YTop, Handler: hdlr}
	ss := text.Style{Color: subtleText, Font: sans(9.5), XAlign: draw.XLeft, YAlign: draw.YTop, Handler: hdlr}
	x, y := dc.Min.X+vg.Points(12), dc.Max.Y-vg.Points(10)
	dc.FillText(ts, vg.Point{X: x, Y: y}, title)
	y -= ts.Height(title) + vg.Points(4)
	dc.FillText(ss, vg.Point{X: x, Y: y}, sub)
	y -= ss.Height(sub) + vg.Points(8)
	return draw.Crop(dc, vg.Points(6), -vg.Points(10), vg.Points(4), -(dc.Max.Y - y))
}

func subtitle(pr *prepared) string {
	s := fmt.Sprintf("%s calls, %s failed, over %.1f s", count(pr.calls), count(pr.failed), pr.x1-pr.x0)
	if pr.shown < pr.calls {
		s += fmt.Sprintf("; latency panel: %s of the calls shown (every failed call and the slowest 1%% kept, the rest thinned evenly)", count(pr.shown))
	}
	return s
}

// count prints n with thousands separators.
func count(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
