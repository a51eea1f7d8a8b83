package pkcs11ha_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// heavyModules are the modules an application importing the library must not inherit: they serve the
// sidecar (crypto11 in its interop tests), the deploy checks (Prometheus rule evaluation, Kubernetes
// manifests) and the lab (the plotter's gonum, the bench's crypto11), each a module of its own
// (docs/ARCHITECTURE.md, "Modules").
var heavyModules = []string{
	"github.com/prometheus/prometheus",
	"k8s.io/",
	"sigs.k8s.io/",
	"gonum.org/",
	"github.com/ThalesGroup/crypto11",
}

// TestImporterModuleGraph builds the module graph of a program that imports only pkcs11ha and
// pkcs11ha/sidecarclient, as an application would, and checks that none of the heavy modules takes part
// in its version selection.
func TestImporterModuleGraph(t *testing.T) {
	root := repoRoot(t)
	app := t.TempDir()
	writeFile(t, filepath.Join(app, "go.mod"), "module example.com/app\n\ngo 1.26.0\n\n"+
		"require github.com/pkcs11-ha/pkcs11-ha v0.0.0-00010101000000-000000000000\n\n"+
		"replace github.com/pkcs11-ha/pkcs11-ha => "+root+"\n")
	writeFile(t, filepath.Join(app, "main.go"), "package main\n\nimport (\n"+
		"\t_ \"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha\"\n"+
		"\t_ \"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient\"\n)\n\nfunc main() {}\n")
	// The library's go.sum holds the checksums of every go.mod the graph can reach.
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	require.NoError(t, err)
	writeFile(t, filepath.Join(app, "go.sum"), string(sum))

	cmd := exec.Command(goTool(t), "list", "-m", "all")
	cmd.Dir = app
	// No workspace: the app sees the library as an importer does. -mod=mod lets go complete the app's
	// requirements; GOPROXY is the environment's (the module cache answers when it is off).
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go list -m all: %s", out)

	var mods []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(line, "go: ") {
			mods = append(mods, f[0])
		}
	}
	// The graph is the library's: its breaker and metrics modules are in it.
	require.Contains(t, mods, "github.com/pkcs11-ha/pkcs11-ha")
	require.Contains(t, mods, "github.com/sony/gobreaker/v2")
	require.Contains(t, mods, "github.com/prometheus/client_golang")
	for _, m := range mods {
		for _, heavy := range heavyModules {
			if m == heavy || strings.HasPrefix(m, strings.TrimSuffix(heavy, "/")+"/") {
				t.Errorf("an importer of pkcs11ha inherits %s", m)
			}
		}
	}
}

// TestSidecarModuleInstallable: `go install github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy@<version>`
// refuses a module whose go.mod has a replace directive, so the sidecar's module reaches the library
// through go.work in development and through a required version in a release, never through replace.
func TestSidecarModuleInstallable(t *testing.T) {
	cmd := exec.Command(goTool(t), "mod", "edit", "-json", filepath.Join(repoRoot(t), "cmd", "hsm-ha-proxy", "go.mod"))
	out, err := cmd.Output()
	require.NoError(t, err)
	var mod struct {
		Module  struct{ Path string }
		Require []struct{ Path string }
		Replace []struct{ Old struct{ Path string } }
	}
	require.NoError(t, json.Unmarshal(out, &mod))
	require.Equal(t, "github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy", mod.Module.Path)
	require.Empty(t, mod.Replace, "cmd/hsm-ha-proxy/go.mod must have no replace directive")
	var paths []string
	for _, r := range mod.Require {
		paths = append(paths, r.Path)
	}
	require.Contains(t, paths, "github.com/pkcs11-ha/pkcs11-ha", "the sidecar requires the library module")
}

// repoRoot is the library module's directory (this package's parent).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(root, "go.mod"))
	return root
}

// goTool is the go command this test runs under.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Skip("no go command")
	}
	return p
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}
