package devicebackend

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines. This binary cannot use softhsm-test/leakcheck (it imports the
// library, which imports this package), and needs none of its allowance: its tests strand no call.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
