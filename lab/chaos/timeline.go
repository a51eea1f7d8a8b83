package chaos

import (
	"strings"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/lab/timeline"
)

// Mark names that open and close a fault window (see the scenarios' inject and remove).
const (
	faultMark   = "fault: "
	removedMark = "removed: "
)

// Timeline is the record as a timeline picture's input (package timeline): every operation, failed or
// unverified ones as failed; every mark as a scripted step; and the fault windows shaded, light red from
// each "fault: X" mark to the next "removed: ..." mark (labelled X), then light amber, "recovering", until
// the next healthy phase, unless the phase the removal started is healthy already. local names the
// local-tier devices.
func (r *Recorder) Timeline(title string, local map[string]bool) timeline.Run {
	ops, phases, marks := r.Ops(), r.Phases(), r.Marks()
	at := func(d time.Duration) time.Time { return r.origin.Add(d) }
	run := timeline.Run{Title: title, Origin: r.origin, Local: local, Samples: make([]timeline.Sample, len(ops))}
	end := time.Duration(0)
	for i := range ops {
		o := &ops[i]
		run.Samples[i] = timeline.Sample{Start: at(o.Start), Latency: o.Latency, Device: o.Device, Err: o.Err != nil || o.Invalid != nil}
		end = max(end, o.End())
	}
	for _, m := range marks {
		end = max(end, m.At)
	}
	fault, from := "", time.Duration(-1)
	for _, m := range marks {
		run.Markers = append(run.Markers, timeline.Marker{At: at(m.At), Label: m.Name})
		switch {
		case strings.HasPrefix(m.Name, faultMark):
			fault, from = strings.TrimPrefix(m.Name, faultMark), m.At
		case strings.HasPrefix(m.Name, removedMark) && from >= 0:
			run.Bands = append(run.Bands, timeline.Band{From: at(from), To: at(m.At), Label: fault})
			if until, ok := recovering(phases, m.At, end); ok {
				run.Bands = append(run.Bands, timeline.Band{From: at(m.At), To: at(until), Label: "recovering",
					Color: timeline.RecoveringBandColor})
			}
			from = -1
		}
	}
	if from >= 0 { // never removed: the script stopped half-way
		run.Bands = append(run.Bands, timeline.Band{From: at(from), To: at(end), Label: fault})
	}
	return run
}

// recovering is when the phase in force at removed is followed by a healthy one (end if never); false
// when the phase in force is healthy itself.
func recovering(phases []Phase, removed, end time.Duration) (time.Duration, bool) {
	cur := -1
	for i, p := range phases {
		if p.Start <= removed {
			cur = i
		}
	}
	if cur < 0 || phases[cur].Healthy {
		return 0, false
	}
	for _, p := range phases[cur+1:] {
		if p.Healthy {
			return p.Start, true
		}
	}
	return end, true
}
