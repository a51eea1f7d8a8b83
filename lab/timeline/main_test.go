package timeline

import (
	"testing"

	"go.uber.org/goleak"
)

// TestRecorder adds from several goroutines: none may be left behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
