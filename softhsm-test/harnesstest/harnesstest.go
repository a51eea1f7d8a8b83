package harnesstest

import (
	"context"
	"testing"
	"time"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// startTimeout bounds Start: building tokens and starting servers takes well under a second unless the
// machine is very busy.
const startTimeout = 2 * time.Minute

// Start is softhsmtest.Start for one test: Dir defaults to tb.TempDir(), Logf to tb.Logf, Close is
// registered with tb.Cleanup (which also runs when the test fails or panics), and an error is fatal. When
// the test has failed, the cleanup first logs the tail of every server log.
func Start(tb testing.TB, opts softhsmtest.Options) *softhsmtest.Topology {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	topo, err := softhsmtest.Start(ctx, opts)
	if err != nil {
		tb.Fatalf("harnesstest.Start: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			topo.LogServerLogs()
		}
		if err := topo.Close(); err != nil {
			tb.Errorf("softhsmtest: Close: %v", err)
		}
	})
	return topo
}

// SoftKeys returns the process-wide software keys (softhsmtest.SharedSoftKeys); an error is fatal.
func SoftKeys(tb testing.TB) softhsmtest.SoftKeys {
	tb.Helper()
	k, err := softhsmtest.SharedSoftKeys()
	if err != nil {
		tb.Fatalf("harnesstest.SoftKeys: %v", err)
	}
	return k
}
