package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/lab/timeline"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// pictureBase is the name of the pictures the demo writes into --report: base.svg and base.png.
const pictureBase = "failover-timeline"

// regionOutBand is the band shaded while neither local device can serve (from the pause of eastus-2,
// eastus-1 being dead already, to its resume).
const regionOutBand = "local region out"

// newRecorder starts the record of the run that the pictures draw: the devices of the topology's local
// region are the local tier.
func newRecorder(topo *softhsmtest.Topology, o demoOptions) *timeline.Recorder {
	local := make(map[string]bool, len(topo.Devices))
	for _, dev := range topo.Devices {
		local[dev.Name] = dev.Region == topo.LocalRegion
	}
	what := "scripted failover"
	if o.noFailover {
		what = "steady load, no failover"
	}
	title := fmt.Sprintf("hsm-ha-demo: %s through the sidecar (%d workers, %s, DR %v one-way)",
		what, o.workers, rateTitle(o.rate), o.drDelay)
	return timeline.NewRecorder(title, local)
}

func rateTitle(rate float64) string {
	if rate <= 0 {
		return "no rate limit"
	}
	return fmt.Sprintf("at most %.0f signatures/s", rate)
}

// mark records a scripted step in the pictures (nothing before the load started).
func (d *demo) mark(label string) {
	if d.rec != nil {
		d.rec.Mark(label)
	}
}

// bandStart and bandEnd open and close a shaded band in the pictures.
func (d *demo) bandStart(label string) {
	if d.rec != nil {
		d.rec.BandStart(label)
	}
}

func (d *demo) bandEnd(label string) {
	if d.rec != nil {
		d.rec.BandEnd(label)
	}
}

// checkReportDir creates the --report directory and checks that it takes files, before the demo runs
// rather than after.
func checkReportDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	f, err := os.CreateTemp(dir, ".hsm-ha-demo-*")
	if err != nil {
		return fmt.Errorf("--report: the directory does not take files: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// writePictures draws what the recorder holds into the --report directory and prints where it went. It
// gives up (and says so) at a second Ctrl-C. It returns 1 when the pictures could not be written.
func (d *demo) writePictures() int {
	if d.rec == nil || d.opts.report == "" {
		return 0
	}
	type result struct {
		svg, png string
		err      error
	}
	done := make(chan result, 1)
	began := time.Now()
	go func() {
		var r result
		r.svg, r.png, r.err = timeline.Render(d.rec.Run(), d.opts.report, pictureBase)
		done <- r
	}()
	select {
	case r := <-done:
		if r.err != nil {
			d.event("failover timeline not written: %v", r.err)
			return 1
		}
		d.event("failover timeline (drawn in %.1fs): %s and %s", time.Since(began).Seconds(), r.png, filepath.Base(r.svg))
		return 0
	case <-d.forced:
		d.event("failover timeline not written (stopped by a second signal)")
		return 1
	}
}
