package main

import (
	"os"
	"testing"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// TestMain lets this test binary serve as a device worker: tests that open a cluster from a sidecar config
// (policy.isolation process by default) re-execute it, as the real binary's main does.
func TestMain(m *testing.M) {
	pkcs11ha.MaybeRunWorker()
	os.Exit(m.Run())
}
