package deploy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// fleet is what the tests need from the harness: a sidecar config over its devices.
type fleet struct {
	config  string           // path of the sidecar's config
	devices []string         // configured device names
	ecKey   *ecdsa.PublicKey // public key of "ec-key" in partition payments
}

// startFleet starts the test harness's devices (two local, two DR; each a p11-kit server) and writes a
// sidecar config for them that listens on sock and lets this process's uid use partition payments. It is
// the only use of the harness in this package.
func startFleet(t *testing.T, sock string) fleet {
	t.Helper()
	topo := harnesstest.Start(t, softhsmtest.Options{})
	f := fleet{config: filepath.Join(topo.Dir, "sidecar.yaml"), ecKey: topo.Keys["ec-key"].Public().(*ecdsa.PublicKey)}
	require.NoError(t, topo.WriteConfig(f.config, softhsmtest.ConfigOptions{
		PINStyle:    softhsmtest.PINFile,
		ServerYAML:  "listen: unix://" + sock,
		ClientsYAML: fmt.Sprintf("- {name: test, unix_uid: %d, partitions: [payments]}", os.Getuid()),
	}))
	for _, d := range topo.Devices {
		f.devices = append(f.devices, d.Name)
	}
	return f
}

// lockedBuffer collects a process's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// sidecarProc is a running `hsm-ha-proxy serve`.
type sidecarProc struct {
	cmd    *exec.Cmd
	exited chan error
	stderr *lockedBuffer
}

// startSidecar runs `bin serve --config cfg --metrics-addr 127.0.0.1:0`, under PR_SET_MDWE when mdwe is
// set (the test binary execs it; see TestMain), and stops it at the end of the test.
func startSidecar(t *testing.T, bin, cfg string, mdwe bool) *sidecarProc {
	t.Helper()
	args := []string{"serve", "--config", cfg, "--metrics-addr", "127.0.0.1:0"}
	cmd := exec.Command(bin, args...)
	if mdwe {
		self, err := os.Executable()
		require.NoError(t, err)
		cmd = exec.Command(self, args...)
		cmd.Env = append(os.Environ(), mdweExecEnv+"="+bin)
	}
	p := &sidecarProc{cmd: cmd, exited: make(chan error, 1), stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	require.NoError(t, cmd.Start())
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := <-p.exited
		p.exited <- err
		if t.Failed() {
			t.Logf("sidecar stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// metricsAddr waits for the sidecar's "serving metrics" log line (written once the cluster is open and
// the metrics listener serves) and returns its address.
func (p *sidecarProc) metricsAddr(t *testing.T) string {
	t.Helper()
	var addr string
	require.Eventually(t, func() bool {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			var l struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "serving metrics" {
				addr = l.Addr
				return true
			}
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("the sidecar exited: %v", err)
		default:
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "the sidecar serves metrics")
	return addr
}

// scrape fetches and parses http://addr/metrics.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	require.NoError(t, err)
	return mfs
}

// exposedSeries maps each series name a scrape exposes (a histogram's _bucket, _sum and _count) to the
// label names its samples carry.
func exposedSeries(mfs map[string]*dto.MetricFamily) map[string][]string {
	out := map[string][]string{}
	for name, mf := range mfs {
		var lbls []string
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(lbls, lp.GetName()) {
					lbls = append(lbls, lp.GetName())
				}
			}
		}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			out[name+"_bucket"] = append(slices.Clone(lbls), "le")
			out[name+"_sum"], out[name+"_count"] = lbls, lbls
		case dto.MetricType_SUMMARY:
			out[name] = append(slices.Clone(lbls), "quantile")
			out[name+"_sum"], out[name+"_count"] = lbls, lbls
		default:
			out[name] = lbls
		}
	}
	return out
}

// targetLabels are added by Prometheus to every scraped series (prometheus/prometheus.yml).
var targetLabels = []string{"job", "instance", "namespace", "pod", "node"}

// TestFreshSidecar runs the real sidecar (go build) over the harness's devices, under the kernel's
// MemoryDenyWriteExecute where it has one, as the systemd unit runs it:
//   - its first scrape, before any request, exposes every metric and label that alerts.yml,
//     alerts_test.yml and dashboard.json name, with a series for every configured device;
//   - `status --ready` and `--live`, the Kubernetes probes, answer 0 on the real sidecar, 1 once it is gone;
//   - it signs (p11-kit-client.so and SoftHSM behind it) and the metrics count the operation.
func TestFreshSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("builds hsm-ha-proxy and runs SoftHSM devices")
	}
	bin := sidecarBinary(t)
	sockDir, err := os.MkdirTemp("", "dpl") // short: a unix socket path has ~100 bytes at most
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "api.sock")
	f := startFleet(t, sock)
	mdwe := mdweSupported()
	if !mdwe {
		t.Log("this kernel has no PR_SET_MDWE: the sidecar runs without MemoryDenyWriteExecute")
	}
	p := startSidecar(t, bin, f.config, mdwe)
	addr := p.metricsAddr(t)
	fresh := scrape(t, addr)

	t.Run("every metric the rules and the dashboard use exists from the first scrape", func(t *testing.T) {
		exposed := exposedSeries(fresh)
		uses, recorded := ruleSelectors(t)
		uses = append(uses, ruleTestSelectors(t)...)
		uses = append(uses, dashboardSelectors(t, readDashboard(t))...)
		checked := map[string]bool{}
		for _, u := range uses {
			if slices.Contains(recorded, u.metric) || (u.metric == "up" && !strings.HasPrefix(u.where, dashboardPath)) {
				continue // defined by a recording rule, or Prometheus' own series of each target
			}
			lbls, ok := exposed[u.metric]
			if !assert.True(t, ok, "%s: metric %s is not exposed by a fresh sidecar", u.where, u.metric) {
				continue
			}
			checked[u.metric] = true
			for _, l := range u.labels {
				assert.True(t, slices.Contains(lbls, l) || slices.Contains(targetLabels, l),
					"%s: metric %s has no label %q (it has %v)", u.where, u.metric, l, lbls)
			}
		}
		t.Logf("%d selectors over %d metrics checked", len(uses), len(checked))
		for name := range checked {
			mf := fresh[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")]
			if mf == nil || !slices.Contains(exposed[name], "device") {
				continue
			}
			seen := map[string]bool{}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "device" {
						seen[lp.GetValue()] = true
					}
				}
			}
			for _, d := range f.devices {
				assert.True(t, seen[d], "%s has no series for device %s on a fresh sidecar", name, d)
			}
		}
	})

	t.Run("the probes answer on the real sidecar", func(t *testing.T) {
		require.Eventually(t, func() bool { return statusCode(t, bin, sock, "--ready") == 0 }, 30*time.Second, 50*time.Millisecond,
			"status --ready exits 0 once the sidecar is ready")
		assert.Equal(t, 0, statusCode(t, bin, sock, "--live"))
	})

	t.Run("it signs, and the metrics count it", func(t *testing.T) {
		c := sidecarclient.Dial(sock)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key, err := c.Key(ctx, "payments", "ec-key")
		require.NoError(t, err)
		digest := sha256.Sum256([]byte("deploy"))
		sig, err := key.SignContext(ctx, digest[:], crypto.SHA256)
		require.NoError(t, err)
		require.True(t, ecdsa.VerifyASN1(f.ecKey, digest[:], sig), "the signature verifies with the harness's key")
		ok := 0.0
		for _, m := range scrape(t, addr)["pkcs11ha_operations_total"].GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "outcome" && lp.GetValue() == "none" {
					ok += m.GetCounter().GetValue()
				}
			}
		}
		assert.Equal(t, 1.0, ok, "one successful operation")
		assert.Equal(t, 1.0, scrape(t, addr)["hsm_ha_proxy_ready"].GetMetric()[0].GetGauge().GetValue())
	})

	t.Run("once it stops, the probes fail", func(t *testing.T) {
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
		select {
		case err := <-p.exited:
			p.exited <- err
			require.NoError(t, err, "exit status 0")
		case <-time.After(20 * time.Second):
			t.Fatal("the sidecar did not exit")
		}
		assert.Equal(t, 1, statusCode(t, bin, sock, "--live"))
		assert.Equal(t, 1, statusCode(t, bin, sock, "--ready"))
	})
}

// statusCode runs `bin status --socket sock FLAG` as a kubelet's exec probe would and returns its exit
// code; a probe prints nothing when it succeeds.
func statusCode(t *testing.T, bin, sock, flag string) int {
	t.Helper()
	out, err := exec.Command(bin, "status", "--socket", sock, flag, "--timeout", "2s").CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		assert.Empty(t, string(out), "status %s prints nothing when it succeeds", flag)
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("status %s: %v", flag, err)
	return -1
}
