package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestBinaryPKCS11Door runs `hsm-ha-proxy serve` with server.pkcs11: pkcs11-tool through the stock
// p11-kit-client.so sees the partitions the clients: section grants, a SIGHUP reload of clients: applies
// to this door too, and SIGTERM removes its socket.
func TestBinaryPKCS11Door(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SoftHSM devices")
	}
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Skip("pkcs11-tool (opensc) is not installed")
	}
	bin := buildBinary(t)
	topo := harnesstest.Start(t, softhsmtest.Options{})
	sockDir, err := os.MkdirTemp("", "hp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	httpSock, p11Sock := filepath.Join(sockDir, "proxy.sock"), filepath.Join(sockDir, "pkcs11.sock")
	cfgPath := filepath.Join(topo.Dir, "sidecar.yaml")
	writeConfig := func(partitions string) {
		require.NoError(t, topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
			ServerYAML:  fmt.Sprintf("listen: unix://%s\npkcs11: unix://%s", httpSock, p11Sock),
			ClientsYAML: fmt.Sprintf("- {name: me, unix_uid: %d, partitions: [%s]}", os.Getuid(), partitions),
		}))
	}
	writeConfig("payments")

	cmd, exited, stderr := startServe(t, bin, cfgPath)
	tokens := func() []string {
		out, _ := exec.Command("pkcs11-tool", "--module", tools.P11KitClient, "-L").CombinedOutput()
		var labels []string
		for _, m := range regexp.MustCompile(`token label\s*:\s*(\S+)`).FindAllStringSubmatch(string(out), -1) {
			labels = append(labels, m[1])
		}
		return labels
	}
	t.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+p11Sock)
	require.Eventually(t, func() bool { return len(tokens()) > 0 }, 30*time.Second, 50*time.Millisecond, "the PKCS#11 door serves")
	fi, err := os.Lstat(p11Sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	assert.Equal(t, []string{"payments"}, tokens())

	writeConfig("payments, ledger")
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return len(tokens()) == 2 }, 10*time.Second, 50*time.Millisecond,
		"a SIGHUP reload of clients: applies to the PKCS#11 door")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		exited <- err
		require.NoError(t, err, "exit status 0")
	case <-time.After(20 * time.Second):
		t.Fatal("the sidecar did not exit")
	}
	_, err = os.Lstat(p11Sock)
	assert.True(t, os.IsNotExist(err), "the PKCS#11 socket is removed")
	assert.Contains(t, stderr.String(), "PKCS#11 front end stopped")
}
