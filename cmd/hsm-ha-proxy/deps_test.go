package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDeployedBinaryLinksNoTestCode: the binary operators deploy must not link package testing, the
// SoftHSM2 harness (process spawning, fault relays, inline PINs) or test libraries. The demo, which needs
// the harness, is lab/cmd/hsm-ha-demo.
func TestDeployedBinaryLinksNoTestCode(t *testing.T) {
	out, err := exec.Command(goTool(t), "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	require.NoError(t, err, "go list: %s", out)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/pkcs11-ha/pkcs11-ha/pkcs11ha", "go list lists the binary's dependencies")
	forbidden := []struct{ what, prefix string }{
		{"package testing", "testing"},
		{"the SoftHSM2 harness", "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"},
		{"testify", "github.com/stretchr/testify"},
		{"goleak", "go.uber.org/goleak"},
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f.prefix || strings.HasPrefix(dep, f.prefix+"/") {
				t.Errorf("hsm-ha-proxy links %s (%s)", f.what, dep)
			}
		}
	}
}
