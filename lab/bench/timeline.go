package bench

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/lab/timeline"
)

// Pictures of the p11-kit scenarios (package timeline), written to Options.PlotDir when it is set.

// lossWindow is how much of a region-loss trial after the loss its picture shows.
const lossWindow = 2 * time.Second

// plotLoss draws the first trial of each region-loss mode: every call that started from the warm-up to
// lossWindow after the loss (the rest of the trial is more of the DR steady state); a step where the loss
// was injected and one at the first success after it; the region shaded from the moment it was wholly
// gone. Progress says where it went.
func (e *p11kitEnv) plotLoss(tr LossTrial, ops []op, injected, gone time.Time, progress func(string, ...any)) {
	if e.o.PlotDir == "" || e.plotted[tr.Mode] {
		return
	}
	e.plotted[tr.Mode] = true
	what := map[string]string{"kill": "both local p11-kit servers SIGKILLed", "partition": "both local relays hang"}[tr.Mode]
	run := timeline.Run{
		Title: fmt.Sprintf("bench: the local region lost (%s) under %d goroutines: first success after %s on %s",
			tr.Mode, tr.goroutines, fmtDur(tr.FirstSuccess), tr.FirstDev),
		Local:   map[string]bool{},
		Markers: []timeline.Marker{{At: injected, Label: what}, {At: gone.Add(tr.FirstSuccess), Label: "first success, on " + tr.FirstDev}},
	}
	end := gone.Add(lossWindow)
	for _, o := range ops {
		if o.start.Before(end) {
			run.Samples = append(run.Samples, timeline.Sample{Start: o.start, Latency: o.end.Sub(o.start), Device: o.dev, Err: o.err != nil})
		}
	}
	run.Bands = []timeline.Band{{From: gone, To: end, Label: "local region out"}}
	for _, d := range e.topo.Devices {
		run.Local[d.Name] = !isDR(d.Name)
	}
	svgPath, pngPath, err := timeline.Render(run, e.o.PlotDir, "region-loss-"+tr.Mode)
	picture(progress, svgPath, pngPath, err)
}

// plotHedging compares the latency of the slow-device runs with and without hedging, per slow pattern
// (every round of a pattern and hedge setting pooled), in one percentile plot.
func plotHedging(dir string, cells []SlowCell, goroutines int, progress func(string, ...any)) {
	var series []timeline.Series
	for _, mode := range slowModes {
		for _, hedge := range []bool{false, true} {
			var lat []time.Duration
			for _, c := range cells {
				if c.Mode == mode && c.Hedge == hedge {
					for _, ns := range c.lat {
						lat = append(lat, time.Duration(ns))
					}
				}
			}
			if len(lat) == 0 {
				continue
			}
			label := mode + ", no hedging"
			if hedge {
				label = mode + ", hedging"
			}
			series = append(series, timeline.Series{Label: label, Group: mode, Dashed: !hedge, Latencies: lat})
		}
	}
	if len(series) == 0 {
		return
	}
	title := fmt.Sprintf("bench: one slow local device (eastus-1, +%v each way), %d goroutines: latency with and without hedging", slowOneWay, goroutines)
	svgPath, pngPath, err := timeline.RenderCDF(title, series, dir, "slow-device-hedging")
	picture(progress, svgPath, pngPath, err)
}

// picture prints where a picture went, or why it did not: a picture is not worth failing the run for.
func picture(progress func(string, ...any), svgPath, pngPath string, err error) {
	if err != nil {
		progress("  picture: %v", err)
		return
	}
	progress("  picture: %s (and %s)", pngPath, filepath.Base(svgPath))
}
