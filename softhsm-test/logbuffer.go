package softhsmtest

import (
	"bytes"
	"sync"
)

// LogBuffer is a goroutine-safe sink for the logs and output of what a test runs (a cluster's slog
// handler, a child process's stderr), to print when the test fails.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
