package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// built is the hsm-ha-proxy binary, built once per test process (removed by TestMain).
var built struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

// sidecarBinary builds cmd/hsm-ha-proxy as an operator would (go build) and returns its path.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "deploy-bin")
		if built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "hsm-ha-proxy")
		var goTool string
		if goTool, built.err = exec.LookPath("go"); built.err != nil {
			return
		}
		cmd := exec.Command(goTool, "build", "-o", built.path,
			"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy")
		built.out, built.err = cmd.CombinedOutput()
	})
	require.NoError(t, built.err, "go build: %s", built.out)
	return built.path
}

func removeBuiltBinary() {
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
}
