package bench

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSplitCalls: a call that overlaps a handover's window, at either end or across it, is "during"; a
// failed call is in neither.
func TestSplitCalls(t *testing.T) {
	hs := []Handover{{from: 100, to: 200}, {from: 1000, to: 1100}}
	calls := []Call{
		{Start: 10, Nanos: 50},                // before
		{Start: 90, Nanos: 20},                // ends inside the first window
		{Start: 150, Nanos: 10},               // inside
		{Start: 190, Nanos: 500},              // starts inside
		{Start: 50, Nanos: 2000},              // spans both
		{Start: 300, Nanos: 100},              // between
		{Start: 1050, Nanos: 5, Failed: true}, // failed during the second window
		{Start: 400, Nanos: 5, Failed: true},  // failed outside
		{Start: 1200, Nanos: 7},               // after
	}
	during, outside, failedDuring := splitCalls(calls, hs)
	assert.ElementsMatch(t, Latencies{20, 10, 500, 2000}, during)
	assert.ElementsMatch(t, Latencies{50, 100, 7}, outside)
	assert.Equal(t, int64(1), failedDuring)
}

// TestHandoverTime reads the old process's handover_ms from a JSON or a text log, after an offset.
func TestHandoverTime(t *testing.T) {
	for _, tc := range []struct {
		name, log string
		offset    int64
		want      time.Duration
	}{
		{"json", `{"msg":"upgrade: handed over; stopping","pkcs11_connections":1,"handover_ms":4.25}` + "\n", 0, 4250 * time.Microsecond},
		{"text", "level=INFO msg=\"upgrade: handed over; stopping\" handover_ms=12.5\n", 0, 12500 * time.Microsecond},
		{"the last one", `"handover_ms":1` + "\n" + `"handover_ms":2` + "\n", 0, 2 * time.Millisecond},
		{"only after the offset", `"handover_ms":1` + "\n", 10, 0},
		{"none", "nothing\n", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sidecar.log")
			require.NoError(t, os.WriteFile(path, []byte(tc.log), 0o600))
			assert.Equal(t, tc.want, handoverTime(path, tc.offset))
		})
	}
}
