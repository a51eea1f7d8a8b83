package timeline

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// maxBandEntries bounds the shaded stretches the legend lists (each is labelled on the plot as well).
const maxBandEntries = 6

// legend lists the devices (tier and calls served), failed calls, steps and shaded stretches, and ends
// with a line on how to read the picture.
func legend(c draw.Canvas, pr *prepared, run *Run) {
	hdlr := plot.DefaultTextHandler
	hs := text.Style{Color: color.Black, Font: sansBold(10), XAlign: draw.XLeft, YAlign: draw.YTop, Handler: hdlr}
	y := c.Max.Y - vg.Points(2)
	c.FillText(hs, vg.Point{X: c.Min.X, Y: y}, "served by (calls)")
	y -= hs.Height("S") + vg.Points(6)

	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.TextStyle.Font = sans(9)
	l.ThumbnailWidth = vg.Points(14)
	l.Padding = vg.Points(3)
	for i, d := range pr.devs {
		tier := "DR"
		if d.local {
			tier = "local"
		}
		l.Add(fmt.Sprintf("%s · %s · %s", d.name, tier, count(pr.served[i])),
			glyphThumb{Color: d.color, Radius: vg.Points(3.5), Shape: d.shape})
	}
	l.Add("failed · "+count(pr.failed), glyphThumb{Color: errorColor, Radius: vg.Points(3.5), Shape: boldCross{}})
	if len(run.Markers) > 0 {
		l.Add("scripted step", lineThumb(markerStyle))
	}
	seen := map[string]bool{}
	for _, b := range run.Bands {
		if b.Label == "" || seen[b.Label] || len(seen) == maxBandEntries {
			continue
		}
		seen[b.Label] = true
		l.Add(fit(l.TextStyle, b.Label, legendW-vg.Points(40)), swatch{opaque(bandColor(b))})
	}
	l.Draw(draw.Crop(c, 0, 0, 0, -(c.Max.Y - y)))

	gs := text.Style{Color: subtleText, Font: sans(8.5), XAlign: draw.XLeft, YAlign: draw.YBottom, Handler: hdlr}
	c.FillText(gs, vg.Point{X: c.Min.X, Y: c.Min.Y + vg.Points(4)}, readingGuide)
}

// readingGuide ends the legend column, one line at a time.
const readingGuide = "Top: one dot per call, at its start\n" +
	"(x) and latency (y); blues and greens\n" +
	"are the local tier, reds and oranges\n" +
	"DR, crosses failed calls.\n" +
	"Bottom: calls served per second.\n" +
	"Dashed lines: scripted steps.\n" +
	"Shaded: the labelled fault window."

// opaque is a band colour made strong enough to read as a legend swatch.
func opaque(c color.Color) color.Color {
	n := color.NRGBAModel.Convert(c).(color.NRGBA)
	n.A = max(n.A, 0x70)
	return n
}
