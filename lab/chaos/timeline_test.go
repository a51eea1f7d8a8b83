package chaos

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/lab/timeline"
)

// The adapter alone, on a hand-made record: no devices.
func TestRecorderTimeline(t *testing.T) {
	tests := []struct {
		name  string
		fault func(r *Recorder)
		bands []string // labels in order
	}{
		{"kill", func(r *Recorder) {
			r.Phase("eastus-1 killed", false)
			r.Mark(faultMark + "eastus-1 killed")
			r.Phase("eastus-1 restarted", false)
			r.Mark(removedMark + "eastus-1 restarted")
			r.Phase("recovered", true)
		}, []string{"eastus-1 killed", "recovering"}},
		{"healthy removal", func(r *Recorder) {
			r.Phase("DR region down", true)
			r.Mark(faultMark + "DR region down")
			r.Phase("DR region back", true)
			r.Mark(removedMark + "DR region back")
		}, []string{"DR region down"}},
		{"never removed", func(r *Recorder) {
			r.Phase("all devices killed", false)
			r.Mark(faultMark + "all devices killed")
		}, []string{"all devices killed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecorder("baseline", true)
			r.Record(Op{Start: r.Now(), Latency: time.Millisecond, Device: "eastus-1"})
			tc.fault(r)
			r.Record(Op{Start: r.Now(), Latency: 50 * time.Millisecond, Device: "none", Err: errors.New("no device")})
			r.Record(Op{Start: r.Now(), Latency: 2 * time.Millisecond, Device: "westus-1", Invalid: errors.New("bad signature")})
			run := r.Timeline("t", map[string]bool{"eastus-1": true})

			assert.Equal(t, r.Origin(), run.Origin)
			require.Len(t, run.Samples, 3)
			assert.Equal(t, []bool{false, true, true}, []bool{run.Samples[0].Err, run.Samples[1].Err, run.Samples[2].Err},
				"failed and unverified calls are drawn as failed")
			assert.Equal(t, r.Origin().Add(r.Ops()[0].Start), run.Samples[0].Start)
			require.Len(t, run.Markers, len(r.Marks()))
			var labels []string
			for _, b := range run.Bands {
				labels = append(labels, b.Label)
				assert.False(t, b.To.Before(b.From), "band %q", b.Label)
			}
			assert.Equal(t, tc.bands, labels)
			if len(run.Bands) == 2 {
				assert.Equal(t, run.Bands[0].To, run.Bands[1].From, "recovering starts where the fault window ends")
				assert.Equal(t, timeline.RecoveringBandColor, run.Bands[1].Color)
			}
		})
	}
}
