package sidecarapi

import (
	"fmt"
	"strings"
	"time"
)

// The status table as people read it (`hsm-ha-proxy status`, `check`, the demo): one way to show a latency
// and a reason, so that every screen that shows a device agrees.

// FormatLatency shows a latency (an EWMA, a probe): "-" when unknown, whole µs below a millisecond, ms with
// one decimal below a second, else seconds to 10 ms.
func FormatLatency(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dus", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
	}
	return d.Round(10 * time.Millisecond).String()
}

// OneLine folds whitespace and cuts s to at most n bytes (n >= 4), ending in "..." when cut, for a table
// cell or an event line.
func OneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
