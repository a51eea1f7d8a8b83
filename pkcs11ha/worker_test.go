package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// workerPolicy runs every device's module in a worker process (this test binary, re-executed: its
// TestMain serves as a worker through leakcheck.Main).
// Attempt deadlines far above a loaded host's hiccups: these tests are about processes, not latency.
const workerPolicy = "{isolation: process, attempt_timeout: {local: 1s}, health: {interval: 500ms, down_interval: 200ms}}"

// workerPIDs returns each device's worker pid from Status.
func workerPIDs(t *testing.T, cl *pkcs11ha.Cluster) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, ds := range cl.Status() {
		out[ds.Name] = ds.WorkerPID
	}
	return out
}

// TestWorkerServes: with process isolation, every device is served by a worker process of its own
// (this process loads no module), RSA and ECDSA signatures and RSA decryption work and verify, and each
// device serves (Outcome.Device).
func TestWorkerServes(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, workerPolicy)
	pids := workerPIDs(t, cl)
	require.NotZero(t, pids["eastus-1"])
	require.NotZero(t, pids["eastus-2"])
	require.NotEqual(t, pids["eastus-1"], pids["eastus-2"], "one worker per device")
	require.NotEqual(t, syscall.Getpid(), pids["eastus-1"])

	ctx := context.Background()
	ec, err := cl.Key(ctx, "ledger", "ec-key")
	require.NoError(t, err)
	rk, err := cl.Key(ctx, "payments", "rsa-key")
	require.NoError(t, err)
	served := map[string]int{}
	signAll := func(n int) {
		for i := range n {
			d := sha256.Sum256(fmt.Appendf(nil, "worker %d", i))
			var out pkcs11ha.Outcome
			sig, err := ec.SignContext(pkcs11ha.WithOutcome(ctx, &out), d[:], crypto.SHA256)
			require.NoError(t, err)
			require.True(t, ecdsa.VerifyASN1(ec.Public().(*ecdsa.PublicKey), d[:], sig))
			served[out.Device]++
			if i%25 == 0 {
				rsig, err := rk.Sign(rand.Reader, d[:], crypto.SHA256)
				require.NoError(t, err)
				require.NoError(t, rsa.VerifyPKCS1v15(rk.Public().(*rsa.PublicKey), crypto.SHA256, d[:], rsig))
				ct, err := rsa.EncryptPKCS1v15(rand.Reader, rk.Public().(*rsa.PublicKey), d[:])
				require.NoError(t, err)
				pt, err := rk.Decrypt(rand.Reader, ct, nil)
				require.NoError(t, err)
				require.Equal(t, d[:], pt)
			}
		}
	}
	signAll(100)
	for _, ds := range cl.Status() {
		require.Equal(t, "up", ds.State, "%s: %s", ds.Name, ds.Reason)
	}
	// Sequential calls follow the lower latency estimate: take the device that served them away, so that
	// the other one serves too.
	first := "eastus-1"
	if served["eastus-2"] > served["eastus-1"] {
		first = "eastus-2"
	}
	require.NoError(t, topo.Device(first).Kill())
	signAll(100)
	require.Len(t, served, 2, "both devices served: %v", served)
}

// TestWorkerLanesInStatus: a worker's lanes (p11kit_client_instances) reach Status from the worker's
// state replies: all open once lanes 1.. have opened, none after the device's server is killed.
func TestWorkerLanesInStatus(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, "{isolation: process, p11kit_client_instances: 3, attempt_timeout: {local: 1s}, "+
		"health: {interval: 100ms, down_interval: 100ms}}")
	require.Eventually(t, func() bool {
		l := cl.Status()[0].Lanes
		return l != nil && *l == pkcs11ha.LaneStatus{Total: 3, Open: 3}
	}, 15*time.Second, 20*time.Millisecond, "every lane open: %+v", cl.Status()[0].Lanes)
	require.NoError(t, topo.Device("eastus-1").Kill())
	require.Eventually(t, func() bool {
		l := cl.Status()[0].Lanes
		return l != nil && l.Total == 3 && l.Open == 0
	}, 15*time.Second, 20*time.Millisecond, "no lane open with the server dead: %+v", cl.Status()[0].Lanes)
}

// TestWorkerCrash: a worker killed (SIGKILL) or crashing (SIGSEGV) under load costs no call — its calls in
// flight fail over within their deadline — and the device comes back with a new worker, by itself.
func TestWorkerCrash(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, workerPolicy)
	k, err := cl.Key(context.Background(), "ledger", "ec-key")
	require.NoError(t, err)
	for _, tc := range []struct {
		sig  syscall.Signal
		exit string // how Status reports the end
	}{
		{syscall.SIGKILL, "signal: killed"},
		{syscall.SIGSEGV, "exit status 2"}, // the Go runtime's crash exit, as for a fault inside the module
	} {
		sig := tc.sig
		t.Run(sig.String(), func(t *testing.T) {
			before := workerPIDs(t, cl)["eastus-1"]
			require.NotZero(t, before)
			stop := make(chan struct{})
			loaded := make(chan *loadResult, 1)
			go func() { loaded <- runLoad(k, 4, 10*time.Second, stop) }()
			time.Sleep(200 * time.Millisecond)
			require.NoError(t, syscall.Kill(before, sig))
			require.Eventually(t, func() bool {
				st := cl.Status()[0]
				return st.WorkerPID != 0 && st.WorkerPID != before && st.State == "up"
			}, 20*time.Second, 20*time.Millisecond, "eastus-1 back with a new worker")
			close(stop)
			res := <-loaded
			st := cl.Status()[0]
			require.Contains(t, st.WorkerExit, tc.exit, "the exit is reported with how it ended")
			require.GreaterOrEqual(t, st.WorkerRestarts, int64(1))
			require.Zero(t, res.failed, "of %d calls: %v", res.ops, res.errs)
			require.Equal(t, topo.Device("eastus-1").Name, st.Name)
		})
	}
}

// TestWorkerHungDevice: a device that stops answering (its server paused) holds its worker's calls; the
// worker is killed once a call is unanswered for policy.reinit_grace past its deadline, no call fails (the
// other device serves), and after the server resumes a new worker brings the device back.
func TestWorkerHungDevice(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, "{isolation: process, reinit_grace: 500ms, attempt_timeout: {local: 1s}, health: {interval: 500ms, down_interval: 200ms}}")
	k, err := cl.Key(context.Background(), "ledger", "ec-key")
	require.NoError(t, err)
	before := workerPIDs(t, cl)["eastus-1"]
	stop := make(chan struct{})
	loaded := make(chan *loadResult, 1)
	go func() { loaded <- runLoad(k, 4, 10*time.Second, stop) }()
	dev := topo.Device("eastus-1")
	require.NoError(t, dev.Pause())
	require.Eventually(t, func() bool {
		st := cl.Status()[0]
		return st.WorkerRestarts >= 1 && st.WorkerPID != before
	}, 15*time.Second, 20*time.Millisecond, "the hung worker is recycled")
	require.Contains(t, cl.Status()[0].WorkerExit, "unanswered")
	require.NoError(t, dev.Resume())
	require.Eventually(t, func() bool {
		st := cl.Status()[0]
		return st.State == "up" && st.WorkerPID != 0
	}, 30*time.Second, 50*time.Millisecond, "eastus-1 back after the server resumes")
	close(stop)
	res := <-loaded
	require.Zero(t, res.failed, "of %d calls: %v", res.ops, res.errs)
}

// procCounts is this process's OS threads, open fds, and children (zombies among them).
type procCounts struct{ threads, fds, children, zombies int }

func readProcCounts(t *testing.T) procCounts {
	t.Helper()
	var c procCounts
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			c.threads, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	c.fds = len(fds)
	procs, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, p := range procs {
		st, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		if len(f) > 1 && f[1] == me {
			c.children++
			if f[0] == "Z" {
				c.zombies++
			}
		}
	}
	return c
}

// TestWorkerKillSoak kills a device's worker over and over (10 times; 100 with CHAOS_LONG=1): every worker
// is reaped (no zombies), and this process's threads, fds and children are what they were.
func TestWorkerKillSoak(t *testing.T) {
	kills := 10
	if os.Getenv("CHAOS_LONG") != "" {
		kills = 100
	}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, "{isolation: process, attempt_timeout: {local: 1s}, health: {interval: 200ms, down_interval: 50ms}}")
	k, err := cl.Key(context.Background(), "ledger", "ec-key")
	require.NoError(t, err)
	sign := func() {
		d := sha256.Sum256([]byte("soak"))
		s, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
		require.NoError(t, err)
		require.True(t, ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], s))
	}
	sign()
	before := readProcCounts(t)
	for i := range kills {
		pid := workerPIDs(t, cl)["eastus-1"]
		require.NotZero(t, pid)
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		require.Eventually(t, func() bool {
			st := cl.Status()[0]
			return st.WorkerPID != 0 && st.WorkerPID != pid && st.State == "up"
		}, 20*time.Second, 10*time.Millisecond, "kill %d: a new worker serves", i)
		sign()
	}
	after := readProcCounts(t)
	t.Logf("%d worker kills: threads %d -> %d, fds %d -> %d, children %d -> %d, zombies %d -> %d",
		kills, before.threads, after.threads, before.fds, after.fds, before.children, after.children, before.zombies, after.zombies)
	require.Zero(t, after.zombies, "every worker reaped")
	require.Equal(t, before.children, after.children, "one worker per device, as before")
	require.LessOrEqual(t, after.fds, before.fds+2, "no fd leaked per kill")
	require.LessOrEqual(t, after.threads, before.threads+4, "no thread held per kill (this process makes no PKCS#11 call)")
	require.Equal(t, int64(kills), cl.Status()[0].WorkerRestarts)
}

// TestOneCallSign: a signature costs one C_Sign round trip, not a length query and then the signature
// (counted on the wire by the device's relay), on both backends, RSA and ECDSA alike.
func TestOneCallSign(t *testing.T) {
	for _, iso := range []string{pkcs11ha.IsolationNone, pkcs11ha.IsolationProcess} {
		t.Run(iso, func(t *testing.T) {
			topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
			cl, _ := openCluster(t, topo, "isolation: "+iso)
			ctx := context.Background()
			ec, err := cl.Key(ctx, "ledger", "ec-key")
			require.NoError(t, err)
			rk, err := cl.Key(ctx, "payments", "rsa-key")
			require.NoError(t, err)
			data0, query0 := topo.Device("eastus-1").SignReplies()
			const n = 20
			for i := range n {
				d := sha256.Sum256(fmt.Appendf(nil, "one call %d", i))
				s, err := ec.Sign(rand.Reader, d[:], crypto.SHA256)
				require.NoError(t, err)
				require.True(t, ecdsa.VerifyASN1(ec.Public().(*ecdsa.PublicKey), d[:], s))
				s, err = rk.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
				require.NoError(t, err)
				require.NoError(t, rsa.VerifyPSS(rk.Public().(*rsa.PublicKey), crypto.SHA256, d[:], s, nil))
			}
			data, query := topo.Device("eastus-1").SignReplies()
			require.Equal(t, int64(2*n), data-data0, "one C_Sign with a signature per signature")
			require.Equal(t, int64(0), query-query0, "no length query")
		})
	}
}

// TestWorkerSlowOpen: a new worker opening its device (C_Initialize, logins, the key listing) over a slow
// link takes longer than operation_timeout + reinit_grace, well within init_timeout. It is not a hang: the
// worker is not killed for it (before, every new worker of a distant device under load was killed half-way
// through its open, and the device never came back), and the device comes back with it.
func TestWorkerSlowOpen(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, "{isolation: process, operation_timeout: 300ms, reinit_grace: 300ms, init_timeout: 60s, "+
		"attempt_timeout: {local: 1s}, health: {interval: 500ms, down_interval: 200ms, timeout: 300ms}}")
	before := workerPIDs(t, cl)["eastus-1"]
	require.NotZero(t, before)
	// 20 ms each way: the open's dozens of round trips take seconds.
	require.NoError(t, topo.Device("eastus-1").SetDelay(20*time.Millisecond, 20*time.Millisecond))
	require.NoError(t, syscall.Kill(before, syscall.SIGKILL))
	killed := time.Now()
	var st pkcs11ha.DeviceStatus
	ok := assert.Eventually(t, func() bool {
		st = cl.Status()[0]
		return st.WorkerPID != 0 && st.WorkerPID != before && st.State == "up"
	}, 90*time.Second, 50*time.Millisecond, "eastus-1 back with a new worker")
	require.True(t, ok, "eastus-1: %d restarts, the last: %s", st.WorkerRestarts, st.WorkerExit)
	t.Logf("back with a new worker %v after the kill", time.Since(killed).Round(time.Millisecond))
	require.Equal(t, int64(1), st.WorkerRestarts, "only the kill ended a worker: %s", st.WorkerExit)
	require.Contains(t, st.WorkerExit, "signal: killed")
}
