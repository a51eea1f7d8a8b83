package timeline

import (
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// outDir is where a test writes its pictures: TIMELINE_KEEP=DIR keeps them there to look at, else a
// temporary directory.
func outDir(t *testing.T) string {
	if d := os.Getenv("TIMELINE_KEEP"); d != "" {
		return d
	}
	return t.TempDir()
}

func TestRender(t *testing.T) {
	many := failoverRun(5000) // 60,000 calls: more than MaxPoints
	tests := []struct {
		name     string
		run      Run
		wantText []string
	}{
		{"failover", failoverRun(400), []string{"synthetic failover", "kill eastus-1", "pause eastus-2",
			"resume eastus-2, restart eastus-1", "eastus-1 down", "local region out", "eastus-1 · local", "westus-2 · DR",
			"4,800 calls"}},
		{"empty", Run{Title: "nothing happened"}, []string{"nothing happened", "no calls recorded", "0 calls"}},
		{"steps-only", Run{Title: "steps without calls", Local: local4,
			Markers: []Marker{{At: t0, Label: "first step"}, {At: t0.Add(time.Millisecond), Label: "second step, at once"}},
			Bands:   []Band{{From: t0, To: t0.Add(2 * time.Second), Label: "window"}}},
			[]string{"first step", "second step, at once", "window", "westus-1 · DR · 0"}},
		{"downsampled", many, []string{"60,000 calls", "50,000 of the calls shown", "kill eastus-1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svgPath, pngPath, err := Render(tc.run, outDir(t), "timeline-"+tc.name)
			require.NoError(t, err)
			texts := svgTexts(t, svgPath)
			for _, w := range tc.wantText {
				assert.Contains(t, texts, w, "the SVG's text")
			}
			checkPNG(t, pngPath)
		})
	}
}

// svgTexts checks that path is well-formed XML with an <svg> root and returns the text of its elements.
func svgTexts(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	dec := xml.NewDecoder(f)
	var b strings.Builder
	root := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "%s is not well-formed XML", path)
		switch tk := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tk.Name.Local
			}
		case xml.CharData:
			b.Write(tk)
			b.WriteByte('\n')
		}
	}
	require.Equal(t, "svg", root, "root element of %s", path)
	return b.String()
}

// checkPNG decodes path as PNG and checks its size: the picture's 12 x 7.5 inches at 110 dpi.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, "%s is not a PNG", path)
	assert.Equal(t, 1320, img.Bounds().Dx(), "width of %s", path)
	assert.Equal(t, 825, img.Bounds().Dy(), "height of %s", path)
}

func TestRenderUnwritableDir(t *testing.T) {
	file := t.TempDir() + "/file"
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	_, _, err := Render(failoverRun(10), file, "x")
	assert.Error(t, err, "a directory that is a file")
}
