package timeline

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// canvas is the whole picture being drawn.
type canvas = draw.Canvas

// writeBoth draws the same picture twice, as SVG (text stays text, so labels can be searched and
// copied) and as PNG (for places that take no SVG), and writes dir/base.svg and dir/base.png.
func writeBoth(dir, base string, paint func(canvas)) (svgPath, pngPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	svgPath = filepath.Join(dir, base+".svg")
	pngPath = filepath.Join(dir, base+".png")

	sc := vgsvg.New(width, height)
	paint(draw.New(sc))
	if err := writeFile(svgPath, sc); err != nil {
		return "", "", err
	}
	ic := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(pngDPI))
	paint(draw.New(ic))
	if err := writeFile(pngPath, vgimg.PngCanvas{Canvas: ic}); err != nil {
		return "", "", err
	}
	return svgPath, pngPath, nil
}

func writeFile(path string, w io.WriterTo) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	if _, err := w.WriteTo(f); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
