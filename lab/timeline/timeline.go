package timeline

import (
	"fmt"
	"image/color"
	"time"
)

// Sample is one recorded call.
type Sample struct {
	Start   time.Time
	Latency time.Duration // as the caller saw it
	Device  string        // the device that served it; not used when Err
	Err     bool          // the call failed (or its result did not verify)
}

// Marker is one scripted step (a device killed, paused, restored): a labelled vertical line.
type Marker struct {
	At    time.Time
	Label string
}

// Band is a stretch of the run to shade: a fault window, the local region out, a device recovering.
type Band struct {
	From, To time.Time
	Label    string
	Color    color.Color // nil: DefaultBandColor (light red)
}

// Run is what Render draws.
type Run struct {
	Title   string
	Origin  time.Time // zero of the time axis; zero value: the earliest sample, marker or band
	Samples []Sample
	Markers []Marker
	Bands   []Band
	// Local says which devices are in the local tier (blues and greens); any other device is drawn as DR
	// (reds and oranges). Devices named here appear in the legend even when they served nothing.
	Local map[string]bool
}

// MaxPoints is the most latency points Render draws in the top panel. Beyond it, it keeps every failed
// call and the slowest 1 % of the successful ones (the tail is what a failover picture is about) and an
// even share of the rest (every k-th in time order), and the subtitle says how many calls are shown.
// The calls-per-second panel always counts every call.
const MaxPoints = 50_000

// Render draws run into dir/base.svg and dir/base.png (creating dir) and returns both paths.
func Render(run Run, dir, base string) (svgPath, pngPath string, err error) {
	pr := prepare(&run, MaxPoints)
	svgPath, pngPath, err = writeBoth(dir, base, func(c canvas) { drawTimeline(c, pr, &run) })
	if err != nil {
		return "", "", fmt.Errorf("timeline: rendering %q: %w", run.Title, err)
	}
	return svgPath, pngPath, nil
}
