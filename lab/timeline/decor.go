package timeline

import (
	"image/color"
	"math"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// markerLine is a scripted step on the time axis.
type markerLine struct {
	x     float64
	label string
}

// markerLayer draws a dashed vertical line per step across the panel and, in the top panel, its label
// along the line, reading upwards from the bottom and hanging from the top, over every line. Labels of
// steps too close to each other are pushed right so that they never overlap.
type markerLayer struct {
	lines      []markerLine
	showLabels bool
}

var markerStyle = draw.LineStyle{Color: markerColor, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(5), vg.Points(3)}}

func newMarkerLayer(run *Run, pr *prepared, labels bool) markerLayer {
	m := markerLayer{showLabels: labels}
	for _, mk := range run.Markers {
		m.lines = append(m.lines, markerLine{x: pr.sec(mk.At), label: mk.Label})
	}
	slices.SortStableFunc(m.lines, func(a, b markerLine) int { return cmpFloat(a.x, b.x) })
	return m
}

func (m markerLayer) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	sty := text.Style{Color: markerColor, Font: sans(8.5), Rotation: math.Pi / 2, XAlign: draw.XRight, YAlign: draw.YTop,
		Handler: p.TextHandler}
	inside := func(x vg.Length) bool { return x >= c.Min.X-0.5 && x <= c.Max.X+0.5 }
	for _, l := range m.lines {
		if x := trX(l.x); inside(x) {
			c.StrokeLine2(markerStyle, x, c.Min.Y, x, c.Max.Y)
		}
	}
	right := vg.Length(math.Inf(-1)) // right edge of the last label drawn
	for _, l := range m.lines {
		x := trX(l.x)
		if !inside(x) || !m.showLabels || l.label == "" {
			continue
		}
		label := fit(sty, l.label, c.Max.Y-c.Min.Y-vg.Points(8))
		w, h := sty.Width(label), sty.Height(label)
		lx := max(x+vg.Points(2), right+vg.Points(1))
		if lx+h > c.Max.X { // no room right of the line: put it left
			lx = x - vg.Points(2) - h
		}
		top := c.Max.Y - vg.Points(3)
		c.FillPolygon(labelBox, box(lx, top-w, lx+h, top))
		c.FillText(sty, vg.Point{X: lx, Y: top}, label)
		right = max(right, lx+h)
	}
}

// bandLayer shades each band across the panel; in the top panel with its label at the bottom left.
type bandLayer struct {
	bands      []Band
	pr         *prepared
	showLabels bool
}

func (b bandLayer) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	sty := text.Style{Color: color.Black, Font: sans(8.5), XAlign: draw.XLeft, YAlign: draw.YBottom, Handler: p.TextHandler}
	for _, bd := range b.bands {
		x0 := max(trX(b.pr.sec(bd.From)), c.Min.X)
		x1 := min(trX(b.pr.sec(bd.To)), c.Max.X)
		if x1 < x0 {
			continue
		}
		x1 = max(x1, x0+vg.Points(1)) // an instant stays visible
		c.FillPolygon(bandColor(bd), box(x0, c.Min.Y, x1, c.Max.Y))
		if !b.showLabels || bd.Label == "" {
			continue
		}
		label := fit(sty, bd.Label, c.Max.X-x0-vg.Points(6))
		pt := vg.Point{X: x0 + vg.Points(3), Y: c.Min.Y + vg.Points(3)}
		c.FillPolygon(labelBox, box(pt.X-1, pt.Y-1, pt.X+sty.Width(label)+1, pt.Y+sty.Height(label)))
		c.FillText(sty, pt, label)
	}
}

func bandColor(b Band) color.Color {
	if b.Color == nil {
		return DefaultBandColor
	}
	return b.Color
}

// fit shortens s with an ellipsis until it is at most w long.
func fit(sty text.Style, s string, w vg.Length) string {
	r := []rune(s)
	for len(r) > 4 && sty.Width(string(r)) > w {
		r = append(r[:len(r)-2], '…')
	}
	return string(r)
}

func box(x0, y0, x1, y1 vg.Length) []vg.Point {
	return []vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// dotLayer draws the calls of the top panel: a dot in its device's colour per successful call, in the
// order they started, then a cross per failed call on top of them all.
type dotLayer struct{ pr *prepared }

func (l dotLayer) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	sty := make([]draw.GlyphStyle, len(l.pr.devs))
	for i, d := range l.pr.devs {
		sty[i] = draw.GlyphStyle{Color: withAlpha(d.color, 0xb0), Radius: vg.Points(1.4), Shape: d.shape}
	}
	for _, d := range l.pr.dots {
		if d.dev >= 0 {
			c.DrawGlyphNoClip(sty[d.dev], vg.Point{X: trX(d.x), Y: trY(d.y)})
		}
	}
	cross := draw.GlyphStyle{Color: errorColor, Radius: vg.Points(2.2), Shape: boldCross{}}
	for _, d := range l.pr.dots {
		if d.dev < 0 {
			c.DrawGlyphNoClip(cross, vg.Point{X: trX(d.x), Y: trY(d.y)})
		}
	}
}

// GlyphBoxes keeps the dots at the panel's edges whole: the plot pads its data area by a cross's size.
func (l dotLayer) GlyphBoxes(p *plot.Plot) []plot.GlyphBox {
	if len(l.pr.dots) == 0 {
		return nil
	}
	r := vg.Points(2.5)
	b := vg.Rectangle{Min: vg.Point{X: -r, Y: -r}, Max: vg.Point{X: r, Y: r}}
	return []plot.GlyphBox{
		{X: p.X.Norm(p.X.Min), Y: p.Y.Norm(p.Y.Min), Rectangle: b},
		{X: p.X.Norm(p.X.Max), Y: p.Y.Norm(p.Y.Max), Rectangle: b},
	}
}

// boldCross is a failed call: a cross heavier than draw.CrossGlyph, to stand out from the dots.
type boldCross struct{}

func (boldCross) DrawGlyph(c *draw.Canvas, sty draw.GlyphStyle, pt vg.Point) {
	c.SetLineStyle(draw.LineStyle{Color: sty.Color, Width: vg.Points(1.1)})
	r := sty.Radius
	var p vg.Path
	p.Move(vg.Point{X: pt.X - r, Y: pt.Y - r})
	p.Line(vg.Point{X: pt.X + r, Y: pt.Y + r})
	p.Move(vg.Point{X: pt.X - r, Y: pt.Y + r})
	p.Line(vg.Point{X: pt.X + r, Y: pt.Y - r})
	c.Stroke(p)
}

// Legend thumbnails.
type (
	glyphThumb draw.GlyphStyle
	swatch     struct{ color color.Color }
	lineThumb  draw.LineStyle
)

func (g glyphThumb) Thumbnail(c *draw.Canvas) {
	c.DrawGlyph(draw.GlyphStyle(g), c.Center())
}

func (s swatch) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(s.color, box(c.Min.X, c.Min.Y+1, c.Max.X, c.Max.Y-1))
}

func (l lineThumb) Thumbnail(c *draw.Canvas) {
	y := c.Center().Y
	c.StrokeLine2(draw.LineStyle(l), c.Min.X, y, c.Max.X, y)
}
