package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind (servers, clusters and their health
// monitors are all closed in t.Cleanup).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
