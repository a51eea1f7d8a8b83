package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// The pictures from hand-made results: no devices.
func TestPictures(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	progress := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }

	e := &p11kitEnv{o: Options{PlotDir: dir}, plotted: map[string]bool{},
		topo: &softhsmtest.Topology{Devices: []*softhsmtest.Device{{Name: "eastus-1"}, {Name: "westus-1"}}}}
	start := time.Now()
	gone := start.Add(300 * time.Millisecond)
	var ops []op
	for i := range 200 {
		s := start.Add(time.Duration(i) * 10 * time.Millisecond)
		o := op{start: s, end: s.Add(time.Millisecond), dev: "eastus-1"}
		switch {
		case s.After(gone.Add(lossWindow)):
			continue // beyond the picture: left out
		case s.After(gone):
			o.end, o.dev = s.Add(45*time.Millisecond), "westus-1"
		case i == 29:
			o.err = errors.New("device gone")
		}
		ops = append(ops, o)
	}
	tr := LossTrial{Mode: "kill", FirstSuccess: 60 * time.Millisecond, FirstDev: "westus-1", goroutines: 4}
	e.plotLoss(tr, ops, start.Add(290*time.Millisecond), gone, progress)
	e.plotLoss(tr, ops, start, gone, progress) // a second trial of the mode is not drawn
	require.Len(t, lines, 1, "one picture per mode: %q", lines)

	cells := []SlowCell{
		{Mode: "onset", Hedge: false, lat: Latencies{1e6, 2e6, 30e6}},
		{Mode: "onset", Hedge: true, lat: Latencies{1e6, 2e6, 6e6}},
		{Mode: "spells", Hedge: true}, // no calls: left out
	}
	plotHedging(dir, cells, 4, progress)
	require.Len(t, lines, 2)
	for _, name := range []string{"region-loss-kill", "slow-device-hedging"} {
		for _, ext := range []string{".svg", ".png"} {
			st, err := os.Stat(filepath.Join(dir, name+ext))
			if assert.NoError(t, err) {
				assert.Positive(t, st.Size())
			}
		}
	}
	svg, err := os.ReadFile(filepath.Join(dir, "region-loss-kill.svg"))
	require.NoError(t, err)
	for _, want := range []string{"both local p11-kit servers SIGKILLed", "first success, on westus-1", "local region out", "westus-1 · DR"} {
		assert.Contains(t, string(svg), want)
	}
	svg, err = os.ReadFile(filepath.Join(dir, "slow-device-hedging.svg"))
	require.NoError(t, err)
	assert.Contains(t, string(svg), "onset, no hedging · p50 2ms · p99 30ms")
	assert.NotContains(t, string(svg), "spells")
}
