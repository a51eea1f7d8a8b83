package deploy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// mdweExecEnv turns the test binary into a wrapper (see TestMain): it refuses itself writable-and-
// executable memory with prctl(PR_SET_MDWE), the kernel's form of systemd's MemoryDenyWriteExecute=,
// then execs the program the variable names with the remaining arguments. The setting survives execve.
const mdweExecEnv = "DEPLOY_TEST_EXEC_WITH_MDWE"

// tryWXEnv turns the test binary into a check (see TestMain): it exits 0 when the kernel refuses it a
// writable and executable mapping, 1 when it gets one.
const tryWXEnv = "DEPLOY_TEST_TRY_WX"

func tryWritableExecutable() int {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return 0
	}
	_ = unix.Munmap(b)
	return 1
}

// mdweSupported reports whether the kernel has PR_SET_MDWE (Linux 6.3 and later).
func mdweSupported() bool {
	_, err := unix.PrctlRetInt(unix.PR_GET_MDWE, 0, 0, 0, 0)
	return err == nil
}

func execWithMDWE(bin string, args []string) int {
	if err := unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "prctl(PR_SET_MDWE): %v\n", err)
		return 111
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, mdweExecEnv+"=") {
			env = append(env, kv)
		}
	}
	err := syscall.Exec(bin, append([]string{bin}, args...), env)
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", bin, err)
	return 111
}

// TestMDWEWrapper: the wrapper TestFreshSidecar runs the sidecar with does take writable and executable
// memory away from the program it execs (and only the wrapper does).
func TestMDWEWrapper(t *testing.T) {
	if !mdweSupported() {
		t.Skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
	}
	self, err := os.Executable()
	require.NoError(t, err)
	run := func(env ...string) int {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		require.NoError(t, err, "%s", out)
		return 0
	}
	assert.Equal(t, 1, run(tryWXEnv+"=1"), "without the wrapper, W+X memory is granted")
	assert.Equal(t, 0, run(tryWXEnv+"=1", mdweExecEnv+"="+self), "under the wrapper, W+X memory is refused")
}
