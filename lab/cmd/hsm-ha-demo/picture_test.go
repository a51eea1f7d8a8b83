package main

import (
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemoInterrupted: a Ctrl-C while the local region is out still leaves the pictures of the run so
// far, with the steps taken, the outage shaded up to the stop, and the stop itself marked; and nothing
// of the demo behind.
func TestDemoInterrupted(t *testing.T) {
	report := t.TempDir()
	run := startDemo(t, buildBinaries(t), "--step", "1s", "--workers", "4", "--rate", "150", "--report", report, "--policy", gatePolicy)
	waitLine(t, run.lines, "step 2/4: pause eastus-2", 120*time.Second)
	time.Sleep(300 * time.Millisecond) // some calls in the outage
	require.NoError(t, run.proc.Signal(syscall.SIGINT))
	go func() { // keep draining
		for range run.lines {
		}
	}()
	select {
	case err := <-run.exited:
		run.finished = true
		require.NoError(t, err, "the demo exits 0 after a Ctrl-C")
	case <-time.After(90 * time.Second):
		t.Fatal("the demo did not stop after SIGINT")
	}
	out := run.stdout.String()
	assert.Contains(t, out, "stopping (interrupt)")
	checkNothingLeft(t, out)
	texts := checkPictures(t, out, report, "1: kill eastus-1", "2: pause eastus-2 (hung)", regionOutBand, "stopped (interrupt)")
	assert.NotContains(t, texts, "3: resume", "a step the demo did not reach")
}

// waitLine reads lines until one contains want.
func waitLine(t *testing.T, lines <-chan string, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "the demo ended before printing %q", want)
			if strings.Contains(l, want) {
				return
			}
		case <-deadline:
			t.Fatalf("%q not printed within %v", want, timeout)
		}
	}
}

// checkPictures: the demo says where it drew the run, both pictures are in dir, the SVG is well-formed
// XML with an <svg> root and carries every label, the PNG decodes. It returns the SVG's text.
func checkPictures(t *testing.T, out, dir string, labels ...string) string {
	t.Helper()
	svgPath, pngPath := filepath.Join(dir, pictureBase+".svg"), filepath.Join(dir, pictureBase+".png")
	assert.Contains(t, out, pngPath+" and "+pictureBase+".svg", "the demo prints where the pictures are")

	f, err := os.Open(svgPath)
	require.NoError(t, err)
	defer f.Close()
	dec := xml.NewDecoder(f)
	var texts strings.Builder
	root := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "%s is not well-formed XML", svgPath)
		switch tk := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tk.Name.Local
			}
		case xml.CharData:
			texts.Write(tk)
			texts.WriteByte('\n')
		}
	}
	require.Equal(t, "svg", root, "root element of %s", svgPath)
	for _, l := range append([]string{"hsm-ha-demo: scripted failover", "eastus-1 · local", "westus-1 · DR"}, labels...) {
		assert.Contains(t, texts.String(), l, "the SVG's text")
	}

	p, err := os.Open(pngPath)
	require.NoError(t, err)
	defer p.Close()
	img, err := png.Decode(p)
	require.NoError(t, err, "%s is not a PNG", pngPath)
	assert.Positive(t, img.Bounds().Dx()*img.Bounds().Dy(), "size of %s", pngPath)
	return texts.String()
}
