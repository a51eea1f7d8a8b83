package main

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/testcerts"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// upgradeRig is a sidecar serving both doors under hot upgrades, and the files around it.
type upgradeRig struct {
	t        *testing.T
	bin      string // the path the sidecar was started as: an upgrade starts what is there
	topo     *softhsmtest.Topology
	cfgPath  string
	sock     string // HTTP API on a unix socket
	addr     string // or HTTP API on TCP with TLS (HOST:PORT)
	p11sock  string // PKCS#11 front end
	pidFile  string
	logPath  string // every generation's stderr (inherited)
	module   string // the stock p11-kit-client.so
	writeCfg func(extraServer string)
	notify   *net.UnixConn // NOTIFY_SOCKET of every generation, as systemd gives a Type=notify unit

	notifyMu sync.Mutex
	notified []string // what the processes told systemd, read as it arrives (drainNotify)
}

// rigUpgradeTimeout is server.upgrade_timeout in the rig: far above a new process's start (about 3 s on a
// loaded 2-core host), and what the test of a new process that never becomes ready waits.
const rigUpgradeTimeout = 20 * time.Second

// startUpgradeRig builds the binary, starts the devices (with certificates, for Java's KeyStore) and the
// first sidecar process, and waits until it serves. When the test ends the serving process is stopped.
// With ca, the HTTP API listens on tcp:// with mutual TLS (a certificate of ca named "app" is a client).
func startUpgradeRig(t *testing.T, ca *testcerts.CA) *upgradeRig {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary and runs SoftHSM devices")
	}
	// The processes an upgrade starts outlive their parent: make them this test's children when orphaned, so
	// that they are reaped (and counted) here.
	require.NoError(t, unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		t.Skipf("p11-kit client module not available: %v", err)
	}
	r := &upgradeRig{t: t, bin: buildBinary(t), module: tools.P11KitClient}
	r.topo = harnesstest.Start(t, softhsmtest.Options{Certificates: true})
	sockDir, err := os.MkdirTemp("", "hp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	r.sock, r.p11sock = filepath.Join(sockDir, "api.sock"), filepath.Join(sockDir, "p11.sock")
	r.pidFile, r.logPath = filepath.Join(sockDir, "hsm-ha-proxy.pid"), filepath.Join(t.TempDir(), "sidecar.log")
	r.cfgPath = filepath.Join(r.topo.Dir, "sidecar.yaml")
	listen, clients := "unix://"+r.sock, fmt.Sprintf("- {name: me, unix_uid: %d, partitions: [payments]}", os.Getuid())
	if ca != nil {
		r.addr = freeTCPAddr(t)
		cert, key := ca.ServerCert(t)
		listen = fmt.Sprintf("tcp://%s\ntls: {cert: %q, key: %q, client_ca: %q}", r.addr, cert, key, ca.PEMPath)
		clients += "\n- {name: app, cert_name: app, partitions: [payments]}"
	}
	r.writeCfg = func(extraServer string) {
		require.NoError(t, r.topo.WriteConfig(r.cfgPath, softhsmtest.ConfigOptions{
			PolicyYAML: "request_timeout: 10s\nattempt_timeout: {local: 3s, dr: 3s}",
			ServerYAML: fmt.Sprintf("listen: %s\npkcs11: unix://%s\npid_file: %s\nshutdown_grace: 10s\nupgrade_timeout: %s\n%s",
				listen, r.p11sock, r.pidFile, rigUpgradeTimeout, extraServer),
			ClientsYAML: clients,
		}))
	}
	r.writeCfg("")
	logFile, err := os.Create(r.logPath)
	require.NoError(t, err)
	defer logFile.Close()
	// Not softhsmtest.LogBuffer: a pipe's copying goroutine would wait for every generation to exit.
	r.notify, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(sockDir, "notify.sock"), Net: "unixgram"})
	require.NoError(t, err)
	drained := make(chan struct{})
	go r.drainNotify(drained)
	t.Cleanup(func() { r.notify.Close(); <-drained })
	// --metrics-addr: a TCP listener passed on too.
	cmd := exec.Command(r.bin, "serve", "--config", r.cfgPath, "--log-format", "text", "--metrics-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+r.notify.LocalAddr().String())
	cmd.Stderr = logFile
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		r.stopServing()
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("sidecar log:\n%s", r.logs())
		}
	})
	require.Eventually(t, func() bool { pid, err := readPID(r.pidFile); return err == nil && pid == cmd.Process.Pid },
		time.Minute, 20*time.Millisecond, "the first process serves and writes its pid")
	return r
}

// drainNotify reads the notify socket until it is closed, as systemd does: a datagram socket holds only a
// few unread messages (net.unix.max_dgram_qlen, 10), and the long run makes 50 upgrades.
func (r *upgradeRig) drainNotify(done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 4096)
	for {
		n, err := r.notify.Read(buf)
		if err != nil {
			return
		}
		r.notifyMu.Lock()
		r.notified = append(r.notified, string(buf[:n]))
		r.notifyMu.Unlock()
	}
}

// notifications returns what the processes told systemd so far.
func (r *upgradeRig) notifications() []string {
	r.notifyMu.Lock()
	defer r.notifyMu.Unlock()
	return append([]string(nil), r.notified...)
}

// freeTCPAddr is a loopback address with a port free now.
func freeTCPAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

func (r *upgradeRig) logs() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

// servingPID is the pid in server.pid_file.
func (r *upgradeRig) servingPID() int {
	pid, err := readPID(r.pidFile)
	require.NoError(r.t, err)
	return pid
}

// upgrade runs `hsm-ha-proxy upgrade --pid-file` and checks that a new process serves.
func (r *upgradeRig) upgrade() {
	r.t.Helper()
	old := r.servingPID()
	var out, errOut bytes.Buffer
	require.Equal(r.t, 0, run([]string{"upgrade", "--pid-file", r.pidFile, "--timeout", "90s"}, &out, &errOut), errOut.String())
	require.NotEqual(r.t, old, r.servingPID())
	reap(old)
}

// signalUpgrade sends SIGUSR2 and waits for the old process to log the outcome: an upgrade that fails.
func (r *upgradeRig) failedUpgrade(why string) {
	r.t.Helper()
	pid := r.servingPID()
	before := strings.Count(r.logs(), "upgrade failed: this process keeps serving")
	require.NoError(r.t, syscall.Kill(pid, syscall.SIGUSR2))
	require.Eventually(r.t, func() bool { return strings.Count(r.logs(), "upgrade failed: this process keeps serving") > before },
		90*time.Second, 20*time.Millisecond, "the old process gives up the upgrade (%s)", why)
	assert.Equal(r.t, pid, r.servingPID(), "the old process still serves (%s)", why)
	assert.True(r.t, alive(pid))
}

// stopServing stops the serving process (SIGTERM) and waits for it.
func (r *upgradeRig) stopServing() {
	pid, err := readPID(r.pidFile)
	if err != nil || !alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	reap(pid)
}

// reap collects an exited process that became this test's child (PR_SET_CHILD_SUBREAPER); it does nothing
// for others (the first process is collected by its exec.Cmd).
func reap(pid int) {
	for alive(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
}

// sidecarProcesses returns the children of parent that run the sidecar's binary (a sidecar or a device
// worker), each with whether it has exited and waits to be reaped.
func sidecarProcesses(parent int) map[int]bool {
	out := map[int]bool{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		st := string(b)
		open, end := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || end < open || st[open+1:end] != "hsm-ha-proxy" {
			continue
		}
		f := strings.Fields(st[end+1:]) // state, ppid, ...
		if len(f) < 2 || f[1] != strconv.Itoa(parent) {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(st)[0])
		out[pid] = f[0] == "Z"
	}
	return out
}

// hotUpgrades is the number of upgrades of TestHotUpgrade: 5, or 50 with CHAOS_LONG (make chaos).
func hotUpgrades() int {
	if os.Getenv("CHAOS_LONG") != "" {
		return 50
	}
	return 5
}

// TestHotUpgrade: applications keep signing through both doors while the sidecar is upgraded in place, again
// and again: PyKCS11 and Java's SunPKCS11 (each a separate process) and crypto11 through the stock
// p11-kit-client.so, and the Go client over HTTP. Not one call fails, every signature verifies, the PyKCS11
// session keeps its handle and its login, and the last process saw no C_Login. Then two upgrades that
// cannot happen: the binary at the path exits at once; the config does not validate. The old process keeps
// serving and no call fails.
func TestHotUpgrade(t *testing.T) {
	r := startUpgradeRig(t, nil)
	apps := startApps(t, r)
	pids := []int{r.servingPID()}

	n := hotUpgrades()
	began := time.Now()
	for range n {
		r.upgrade()
		pids = append(pids, r.servingPID())
		apps.waitProgress(t, 5)
	}
	t.Logf("%d hot upgrades in %v (pids %v)", n, time.Since(began).Round(time.Millisecond), pids)

	t.Run("an upgrade to a binary that exits at once", func(t *testing.T) {
		real := r.bin + ".real"
		require.NoError(t, os.Rename(r.bin, real))
		require.NoError(t, os.WriteFile(r.bin, []byte("#!/bin/sh\necho 'broken build' >&2\nexit 3\n"), 0o755))
		r.failedUpgrade("the new binary exits")
		require.NoError(t, os.Rename(real, r.bin))
		apps.waitProgress(t, 5)
	})
	t.Run("an upgrade to a binary that never becomes ready", func(t *testing.T) {
		real := r.bin + ".real"
		require.NoError(t, os.Rename(r.bin, real))
		require.NoError(t, os.WriteFile(r.bin, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755))
		r.failedUpgrade("the new process is not ready within server.upgrade_timeout")
		assert.Contains(t, r.logs(), "timed out")
		require.NoError(t, os.Rename(real, r.bin))
		apps.waitProgress(t, 5)
	})
	t.Run("an upgrade whose config does not validate", func(t *testing.T) {
		r.writeCfg("frobnicate: yes\n")
		r.failedUpgrade("the config is invalid")
		assert.Contains(t, r.logs(), "frobnicate", "the new process said why")
		r.writeCfg("")
		apps.waitProgress(t, 5)
	})
	t.Run("and then an upgrade that works", func(t *testing.T) {
		r.upgrade()
		apps.waitProgress(t, 5)
	})
	blip := apps.check(t)
	t.Logf("upgrade blip: the slowest call of any application over %d upgrades took %v", n+1, blip.Round(time.Microsecond))
	text, err := scrape(r.sock)
	require.NoError(t, err)
	assert.Contains(t, text, `hsm_ha_proxy_pkcs11_calls_total{`, "the last process served PKCS#11 calls")
	assert.NotContains(t, text, `call="C_Login"`, "no application logged in again")
	assert.Equal(t, strconv.Itoa(r.servingPID()), strings.TrimSpace(mustRead(t, r.pidFile)))
	c := sidecarclient.Dial(r.sock)
	defer c.Close()
	ok, err := c.Ready(context.Background())
	require.NoError(t, err)
	assert.True(t, ok)

	// Each process ran its own device workers (policy.isolation process): the serving one has one per
	// device, and every old process's workers ended with it (orphans come to this test, the subreaper).
	serving := r.servingPID()
	assert.Len(t, sidecarProcesses(serving), len(r.topo.Devices), "the serving process's device workers")
	require.Eventually(t, func() bool {
		for pid, zombie := range sidecarProcesses(os.Getpid()) {
			if pid != serving && !zombie {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "the old processes' workers have exited: %v", sidecarProcesses(os.Getpid()))
	for pid := range sidecarProcesses(os.Getpid()) {
		if pid != serving {
			reap(pid)
		}
	}

	// systemd (Type=notify, NotifyAccess=all) was told of each process as it took over, in order.
	pids = append(pids, r.servingPID())
	var want []string
	for _, pid := range pids {
		want = append(want, fmt.Sprintf("MAINPID=%d\nREADY=1", pid))
	}
	assert.Equal(t, want, r.notifications())
}

func mustRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// TestHotUpgradeTLS: with the HTTP API on mutual TLS, whose connections cannot move, the Go client still sees
// no failed call through upgrades (requests in flight finish; it resends one that meets an idle connection
// being closed), and PyKCS11 keeps its session through the PKCS#11 front end.
func TestHotUpgradeTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, dir, "ca")
	r := startUpgradeRig(t, ca)
	cert, key := ca.Issue(t, "app", nil)
	c := sidecarclient.DialTLS(r.addr, testcerts.ClientTLS(t, ca, cert, key))
	t.Cleanup(func() { c.Close() })
	ecPub := r.topo.Keys["ec-key"].Public()
	k := c.KeyWithPublic("payments", "ec-key", ecPub)
	apps := newAppSet(t,
		startPyKCS11App(t, r.module, r.p11sock, r.topo.Keys["rsa-key"].Public()),
		signLoop("sidecarclient over TLS", 4, ecPub, func(d []byte) ([]byte, error) {
			return k.SignContext(context.Background(), d, crypto.SHA256)
		}),
	)
	apps.waitProgress(t, 20)
	for range 3 {
		r.upgrade()
		apps.waitProgress(t, 5)
	}
	apps.check(t)
}
