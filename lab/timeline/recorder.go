package timeline

import (
	"slices"
	"sync"
	"time"
)

// Recorder collects a Run while it happens, for a program that keeps no per-call record of its own (the
// demo): its load workers Add every call, its script marks each step and opens and closes bands. Safe for
// concurrent use; it keeps every call (about 50 bytes each) until it is dropped.
type Recorder struct {
	mu   sync.Mutex
	run  Run
	open map[string]time.Time // band label -> start, while open
}

// NewRecorder starts a record whose time axis starts now; local names the local-tier devices (see Run).
func NewRecorder(title string, local map[string]bool) *Recorder {
	return &Recorder{run: Run{Title: title, Origin: time.Now(), Local: local}, open: map[string]time.Time{}}
}

// Add records one call that started at start and took latency; device is the device that served it, err
// what the caller got (non-nil: drawn as failed).
func (r *Recorder) Add(start time.Time, latency time.Duration, device string, err error) {
	r.mu.Lock()
	r.run.Samples = append(r.run.Samples, Sample{Start: start, Latency: latency, Device: device, Err: err != nil})
	r.mu.Unlock()
}

// Mark records a scripted step now.
func (r *Recorder) Mark(label string) {
	r.mu.Lock()
	r.run.Markers = append(r.run.Markers, Marker{At: time.Now(), Label: label})
	r.mu.Unlock()
}

// BandStart opens a shaded band (say "local region out") now; BandEnd with the same label closes it.
// Opening a band that is open already keeps its start.
func (r *Recorder) BandStart(label string) {
	r.mu.Lock()
	if _, ok := r.open[label]; !ok {
		r.open[label] = time.Now()
	}
	r.mu.Unlock()
}

// BandEnd closes the band opened with label now (nothing if none is open).
func (r *Recorder) BandEnd(label string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if from, ok := r.open[label]; ok {
		delete(r.open, label)
		r.run.Bands = append(r.run.Bands, Band{From: from, To: time.Now(), Label: label})
	}
}

// Run returns a copy of what was recorded so far; bands still open end now.
func (r *Recorder) Run() Run {
	r.mu.Lock()
	defer r.mu.Unlock()
	run := r.run
	run.Samples = slices.Clone(r.run.Samples)
	run.Markers = slices.Clone(r.run.Markers)
	run.Bands = slices.Clone(r.run.Bands)
	now := time.Now()
	for label, from := range r.open {
		run.Bands = append(run.Bands, Band{From: from, To: now, Label: label})
	}
	slices.SortFunc(run.Bands, func(a, b Band) int { return a.From.Compare(b.From) })
	return run
}
