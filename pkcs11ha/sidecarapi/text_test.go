package sidecarapi

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestFormatLatency(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "-"},
		{-time.Millisecond, "-"},
		{850 * time.Microsecond, "850us"},
		{time.Millisecond, "1.0ms"},
		{12345 * time.Microsecond, "12.3ms"},
		{999999 * time.Microsecond, "1000.0ms"},
		{1234 * time.Millisecond, "1.23s"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, FormatLatency(tt.d), "%v", tt.d)
	}
}

func TestOneLine(t *testing.T) {
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"  folded\n\twhite   space ", 40, "folded white space"},
		{"exactly ten", 11, "exactly ten"},
		{"one two three four", 10, "one two..."},
	}
	for _, tt := range tests {
		got := OneLine(tt.s, tt.n)
		assert.Equal(t, tt.want, got)
		assert.LessOrEqual(t, len(got), tt.n)
	}
}
