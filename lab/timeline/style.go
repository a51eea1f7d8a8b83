package timeline

import (
	"image/color"
	"slices"

	xfont "golang.org/x/image/font"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Picture size: wide enough for a minute of calls at one-second resolution, readable when pasted into a
// document. The PNG is rendered at pngDPI (1320 x 825 pixels).
const (
	width   = 12 * vg.Inch
	height  = 7.5 * vg.Inch
	pngDPI  = 110
	legendW = 2.4 * vg.Inch
)

// Local devices get blues and greens, DR devices reds and oranges, so that the tier that served a call
// is plain at a glance; within a tier the colour tells the device.
var (
	localPalette = []color.NRGBA{
		{0x1f, 0x77, 0xb4, 0xff}, // blue
		{0x2c, 0xa0, 0x2c, 0xff}, // green
		{0x17, 0xbe, 0xcf, 0xff}, // cyan
		{0x0b, 0x3c, 0x7a, 0xff}, // dark blue
		{0x8c, 0xc6, 0x3f, 0xff}, // light green
		{0x00, 0x69, 0x5c, 0xff}, // dark teal
	}
	drPalette = []color.NRGBA{
		{0xd6, 0x27, 0x28, 0xff}, // red
		{0xff, 0x7f, 0x0e, 0xff}, // orange
		{0x8c, 0x1c, 0x13, 0xff}, // dark red
		{0xf2, 0xb7, 0x01, 0xff}, // amber
		{0xe7, 0x4c, 0x8c, 0xff}, // raspberry
		{0xa6, 0x56, 0x28, 0xff}, // brown
	}
	// Devices beyond a palette's length reuse its colours with another glyph.
	shapes = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}, draw.RingGlyph{}}

	errorColor     = color.NRGBA{0x11, 0x11, 0x11, 0xff}
	errorRateColor = color.NRGBA{0x55, 0x55, 0x55, 0xff}
	markerColor    = color.NRGBA{0x33, 0x33, 0x33, 0xff}
	gridColor      = color.NRGBA{0xdd, 0xdd, 0xdd, 0xff}
	subtleText     = color.NRGBA{0x55, 0x55, 0x55, 0xff}
	labelBox       = color.NRGBA{0xff, 0xff, 0xff, 0xc8}

	// DefaultBandColor shades a Band that names no colour: a light red for a fault window.
	DefaultBandColor color.Color = color.NRGBA{0xe0, 0x40, 0x40, 0x30}
	// RecoveringBandColor is a light amber, for the stretch after a fault was removed and before the
	// victims are back in service.
	RecoveringBandColor color.Color = color.NRGBA{0xf0, 0xb0, 0x20, 0x30}
)

// style is how one device is drawn.
type style struct {
	name  string
	local bool
	color color.NRGBA
	shape draw.GlyphDrawer
}

// styles assigns each device its colour: local devices first, then DR, each tier sorted by name, the
// i-th device of a tier taking the tier palette's i-th colour. The same set of device names always gets
// the same colours, and no two devices of one run share colour and glyph.
func styles(devices []string, local map[string]bool) []style {
	var l, d []string
	for _, n := range devices {
		if local[n] {
			l = append(l, n)
		} else {
			d = append(d, n)
		}
	}
	slices.Sort(l)
	slices.Sort(d)
	out := make([]style, 0, len(devices))
	for i, n := range l {
		out = append(out, style{name: n, local: true, color: localPalette[i%len(localPalette)], shape: shapes[i/len(localPalette)%len(shapes)]})
	}
	for i, n := range d {
		out = append(out, style{name: n, color: drPalette[i%len(drPalette)], shape: shapes[i/len(drPalette)%len(shapes)]})
	}
	return out
}

// withAlpha makes dense clouds of points show their density.
func withAlpha(c color.NRGBA, a uint8) color.NRGBA { c.A = a; return c }

func sans(size vg.Length) font.Font {
	return font.Font{Typeface: "Liberation", Variant: "Sans", Size: size}
}

func sansBold(size vg.Length) font.Font {
	f := sans(size)
	f.Weight = xfont.WeightBold
	return f
}
