package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		out  string // in stdout or stderr
	}{
		{"no command", nil, 2, "usage:"},
		{"help", []string{"help"}, 0, "hsm-ha-proxy serve --config FILE"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"the demo is its own command", []string{"demo"}, 2, `unknown command "demo"`},
		{"serve without config", []string{"serve"}, 2, "--config FILE is required"},
		{"serve with a bad flag", []string{"serve", "--nope"}, 2, "flag provided but not defined"},
		{"serve with a missing config", []string{"serve", "--config", "/nonexistent/hsm-ha.yaml"}, 1, "loading the config"},
		{"serve with a bad log level", []string{"serve", "--config", "x", "--log-level", "loud"}, 2, "--log-level"},
		{"status without a sidecar", []string{"status", "--socket", "/nonexistent/hsm.sock"}, 1, "hsm-ha-proxy status:"},
		{"status over TLS without files", []string{"status", "--addr", "https://127.0.0.1:1"}, 2, "--addr needs --cert, --key and --ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tt.args, &out, &errOut)
			assert.Equal(t, tt.code, code)
			assert.Contains(t, out.String()+errOut.String(), tt.out)
		})
	}
}

func TestPrintStatus(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, &sidecarapi.Status{Ready: false, Devices: []sidecarapi.DeviceStatus{
		{Name: "eastus-1", Region: "eastus", Tier: 0, State: "up", Breaker: "closed", EWMA: 57 * time.Microsecond, InFlight: 3},
		{Name: "westus-1", Region: "westus", Tier: 1, State: "down", Breaker: "open", EWMA: 12500 * time.Microsecond,
			LastError: "pkcs11ha: device westus-1: C_Sign: CKR_DEVICE_ERROR (0x30) [device-down]"},
		{Name: "eastus-2", Region: "eastus", State: "up", Breaker: "closed", Lanes: &sidecarapi.LaneStatus{Total: 4, Open: 2}},
		{Name: "westus-2", Region: "westus", State: "up", Breaker: "closed", Lanes: &sidecarapi.LaneStatus{Total: 4, Open: 4}},
	}})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	require.Len(t, lines, 6)
	assert.Equal(t, []string{"DEVICE", "REGION", "TIER", "STATE", "BREAKER", "EWMA", "IN-FLIGHT", "ABANDONED", "REASON"}, strings.Fields(lines[0]))
	assert.Equal(t, []string{"eastus-1", "eastus", "0", "up", "closed", "57us", "3", "0"}, strings.Fields(lines[1]))
	assert.Equal(t, []string{"westus-1", "westus", "1", "down", "open", "12.5ms", "0", "0"}, strings.Fields(lines[2])[:8])
	assert.Contains(t, lines[2], "CKR_DEVICE_ERROR")
	assert.True(t, strings.HasSuffix(lines[3], "  2 of 4 lanes open"), "a lane shortfall is noted: %q", lines[3])
	assert.Len(t, strings.Fields(lines[4]), 8, "all lanes open: nothing to say")
	assert.True(t, strings.HasPrefix(lines[5], "ready: no"))
}

// goTool finds the go command that runs the tests.
func goTool(t testing.TB) string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Skip("no go command to build the binary with")
	}
	return p
}

// buildBinary builds hsm-ha-proxy into a temporary directory.
func buildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hsm-ha-proxy")
	cmd := exec.Command(goTool(t), "build", "-o", bin, ".")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// startServe runs `hsm-ha-proxy serve --config cfgPath` until the test ends (then kills it, and logs its
// stderr if the test failed). exited receives its exit once; a test that reads it must put it back.
func startServe(t *testing.T, bin, cfgPath string) (cmd *exec.Cmd, exited chan error, stderr *softhsmtest.LogBuffer) {
	t.Helper()
	stderr = &softhsmtest.LogBuffer{}
	cmd = exec.Command(bin, "serve", "--config", cfgPath, "--log-format", "text")
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("sidecar stderr:\n%s", stderr.String())
		}
	})
	return cmd, exited, stderr
}

// gauge reads one unlabelled gauge from a Prometheus text exposition.
func gauge(text, name string) float64 {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// TestBinarySignals runs the real binary: `status` prints its device table, SIGHUP reloads clients:, and
// SIGTERM with requests in flight lets them finish, removes the socket and exits 0.
func TestBinarySignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SoftHSM devices")
	}
	bin := buildBinary(t)
	topo := harnesstest.Start(t, softhsmtest.Options{})
	sockDir, err := os.MkdirTemp("", "hp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "proxy.sock")
	cfgPath := filepath.Join(topo.Dir, "sidecar.yaml")
	writeConfig := func(partitions string) {
		require.NoError(t, topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
			PolicyYAML:  "request_timeout: 10s\nattempt_timeout: {local: 3s, dr: 3s}",
			ServerYAML:  fmt.Sprintf("listen: unix://%s\nshutdown_grace: 10s", sock),
			ClientsYAML: fmt.Sprintf("- {name: me, unix_uid: %d, partitions: [%s]}", os.Getuid(), partitions),
		}))
	}
	writeConfig("payments")

	cmd, exited, stderr := startServe(t, bin, cfgPath)

	c := sidecarclient.Dial(sock)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	require.Eventually(t, func() bool { ok, _ := c.Ready(ctx); return ok }, 30*time.Second, 20*time.Millisecond,
		"the sidecar becomes ready")
	fi, err := os.Lstat(sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	t.Run("status command", func(t *testing.T) {
		var out, errOut bytes.Buffer
		require.Equal(t, 0, run([]string{"status", "--socket", sock}, &out, &errOut), errOut.String())
		for _, s := range []string{"DEVICE", "BREAKER", "EWMA", "IN-FLIGHT", "eastus-1", "eastus-2", "westus-1", "westus-2", "ready: yes"} {
			assert.Contains(t, out.String(), s)
		}
		out.Reset()
		require.Equal(t, 0, run([]string{"status", "--socket", "unix://" + sock, "--json"}, &out, &errOut))
		assert.Contains(t, out.String(), `"breaker": "closed"`)
	})

	t.Run("a second sidecar on the same socket refuses to start", func(t *testing.T) {
		out, err := exec.Command(bin, "serve", "--config", cfgPath).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Contains(t, string(out), "another process is serving")
	})

	t.Run("SIGHUP reloads clients", func(t *testing.T) {
		_, err := c.Keys(ctx, "ledger")
		var ae *sidecarclient.APIError
		require.ErrorAs(t, err, &ae)
		require.Equal(t, 403, ae.StatusCode)
		writeConfig("payments, ledger")
		require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
		require.Eventually(t, func() bool { _, err := c.Keys(ctx, "ledger"); return err == nil }, 10*time.Second, 20*time.Millisecond)
	})

	t.Run("SIGTERM lets in-flight requests finish", func(t *testing.T) {
		key, err := c.Key(ctx, "payments", "ec-key")
		require.NoError(t, err)
		pub := topo.Keys["ec-key"].Public().(*ecdsa.PublicKey)
		// Every signature now takes several round trips of 2 x 60 ms.
		for _, d := range topo.Devices {
			require.NoError(t, d.SetDelay(60*time.Millisecond, 60*time.Millisecond))
		}
		const n = 8
		errs := make(chan error, n)
		for i := range n {
			go func() {
				d := sha256.Sum256([]byte{byte(i)})
				sig, err := key.SignContext(ctx, d[:], crypto.SHA256)
				if err == nil && !ecdsa.VerifyASN1(pub, d[:], sig) {
					err = errors.New("signature does not verify")
				}
				errs <- err
			}()
		}
		require.Eventually(t, func() bool {
			text, err := scrape(sock)
			return err == nil && gauge(text, "hsm_ha_proxy_http_in_flight_requests") >= n+1 // +1: this scrape
		}, 10*time.Second, 5*time.Millisecond, "all requests in flight")

		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		for range n {
			assert.NoError(t, <-errs)
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			require.NoError(t, err, "exit status 0")
		case <-time.After(20 * time.Second):
			t.Fatal("the sidecar did not exit")
		}
		_, err = os.Lstat(sock)
		assert.True(t, os.IsNotExist(err), "the socket is removed")
		logs := stderr.String()
		assert.Contains(t, logs, "shutting down")
		assert.Contains(t, logs, "hsm-ha-proxy stopped")
		assert.NotContains(t, logs, "grace period over")
		for _, d := range topo.Devices {
			require.NoError(t, d.SetDelay(0, 0))
		}
	})
}

// scrape fetches /metrics over the unix socket.
func scrape(sock string) (string, error) {
	var d bytes.Buffer
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")); err != nil {
		return "", err
	}
	_, err = d.ReadFrom(conn)
	return d.String(), err
}
