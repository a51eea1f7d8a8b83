package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeSidecar answers /readyz and /healthz on a unix socket with the given status codes (0: no answer,
// the connection is closed) and returns the socket path.
func fakeSidecar(t *testing.T, readyz, healthz int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "probe") // short: a socket path has ~100 bytes at most
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	answer := func(code int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if code == 0 {
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = io.WriteString(w, body)
		}
	}
	mux := http.NewServeMux()
	readyBody := `{"ready":true}`
	if readyz == http.StatusServiceUnavailable {
		readyBody = `{"error":{"code":"not_ready","message":"some partition has no up device holding all its keys"}}`
	}
	mux.Handle("/readyz", answer(readyz, readyBody))
	mux.Handle("/healthz", answer(healthz, `{"status":"ok"}`))
	srv := &http.Server{Handler: mux}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

// TestStatusProbes: `status --ready` and `--live` answer with their exit code only, as exec probes need.
func TestStatusProbes(t *testing.T) {
	tests := []struct {
		name            string
		readyz, healthz int  // what the sidecar answers
		noSidecar       bool // nothing listens on the socket
		flags           []string
		code            int
		stderr          string // "" means nothing at all on stderr
	}{
		{"ready", 200, 200, false, []string{"--ready"}, 0, ""},
		{"not ready", 503, 200, false, []string{"--ready"}, 1, "not ready"},
		{"ready answers an unexpected error", 500, 200, false, []string{"--ready"}, 1, "status --ready:"},
		{"ready without an answer", 0, 200, false, []string{"--ready"}, 1, "status --ready:"},
		{"live while not ready", 503, 200, false, []string{"--live"}, 0, ""},
		{"live without an answer", 200, 0, false, []string{"--live"}, 1, "status --live:"},
		{"ready without a sidecar", 0, 0, true, []string{"--ready"}, 1, "status --ready:"},
		{"live without a sidecar", 0, 0, true, []string{"--live"}, 1, "status --live:"},
		{"ready and live together", 200, 200, false, []string{"--ready", "--live"}, 2, "usage:"},
		{"ready with json", 200, 200, false, []string{"--ready", "--json"}, 2, "usage:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "none.sock")
			if !tt.noSidecar {
				sock = fakeSidecar(t, tt.readyz, tt.healthz)
			}
			var out, errOut bytes.Buffer
			args := append([]string{"status", "--socket", sock, "--timeout", "2s"}, tt.flags...)
			assert.Equal(t, tt.code, run(args, &out, &errOut), errOut.String())
			if tt.code != 2 {
				assert.Empty(t, out.String(), "a probe prints nothing on stdout")
			}
			if tt.stderr == "" {
				assert.Empty(t, errOut.String())
			} else {
				assert.Contains(t, errOut.String(), tt.stderr)
			}
		})
	}
}
