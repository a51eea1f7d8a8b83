package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// workerKills is how many times TestWorkerFaults SIGKILLs each device's worker: 1, or 20 with CHAOS_LONG
// (make chaos).
func workerKills() int {
	if os.Getenv("CHAOS_LONG") != "" {
		return 20
	}
	return 1
}

// deviceStatus reads one device's line of `hsm-ha-proxy status --json`.
func (r *upgradeRig) deviceStatus(name string) sidecarapi.DeviceStatus {
	r.t.Helper()
	var out, errOut bytes.Buffer
	require.Equal(r.t, 0, run([]string{"status", "--socket", r.sock, "--json"}, &out, &errOut), errOut.String())
	var st sidecarapi.Status
	require.NoError(r.t, json.Unmarshal(out.Bytes(), &st))
	for _, d := range st.Devices {
		if d.Name == name {
			return d
		}
	}
	require.FailNow(r.t, "no such device in the status", name)
	return sidecarapi.DeviceStatus{}
}

// workerBack waits until device is back with a worker other than old, restarted more than restarts times:
// its probes pass and every partition is open. Its circuit breaker may still be open: the calls that
// failed when the worker died are an offence, and each one keeps it out longer (until a trial call
// succeeds), which is the router's business, not the worker's.
func (r *upgradeRig) workerBack(device string, old int, restarts int64, what string) sidecarapi.DeviceStatus {
	r.t.Helper()
	var d sidecarapi.DeviceStatus
	// Generous: a restart waits for the backoff and the next probe, then two good probes; on a loaded
	// 2-core host that is seconds, not a minute.
	require.Eventually(r.t, func() bool {
		d = r.deviceStatus(device)
		return (d.State == "up" || d.State == "degraded" && d.Breaker != "closed") && partitionsOpen(d) &&
			d.WorkerPID != 0 && d.WorkerPID != old && d.WorkerRestarts > restarts
	}, 2*time.Minute, 50*time.Millisecond, "%s back with a new worker after %s", device, what)
	return d
}

func partitionsOpen(d sidecarapi.DeviceStatus) bool {
	for _, p := range d.Partitions {
		if !p.Open {
			return false
		}
	}
	return len(d.Partitions) > 0
}

// signalWorker sends sig to device's worker and waits until the device is back with a new one; the status
// must report exactly one restart, ended as exit says.
func (r *upgradeRig) signalWorker(device string, sig syscall.Signal, exit string) {
	r.t.Helper()
	before := r.deviceStatus(device)
	require.NotZero(r.t, before.WorkerPID, "%s has a worker: %+v", device, before)
	require.NoError(r.t, syscall.Kill(before.WorkerPID, sig))
	after := r.workerBack(device, before.WorkerPID, before.WorkerRestarts, sig.String())
	assert.Equal(r.t, before.WorkerRestarts+1, after.WorkerRestarts, "%s: one restart per %v", device, sig)
	assert.Contains(r.t, after.WorkerExit, exit, "%s: how its worker ended", device)
}

// TestWorkerFaults: the applications of TestHotUpgrade (PyKCS11, Java SunPKCS11 and crypto11 through the
// stock p11-kit-client.so, the Go client over HTTP) sign continuously through one sidecar process (a local
// pair and a DR pair of devices, each module in its own worker) while every device's worker is SIGKILLed in
// turn, one worker is SIGSEGVed (as a crash inside a vendor's module), and one device's server is SIGSTOPped
// until its worker is recycled for the calls it leaves unanswered, then SIGCONTed. Not one call fails, every
// signature verifies, PyKCS11 keeps its session handle and login, no application logs in again, the sidecar
// never restarts, and every worker end is reported (status, metrics, log) with how it ended.
func TestWorkerFaults(t *testing.T) {
	r := startUpgradeRig(t, nil)
	apps := startApps(t, r)
	logins := frontEndLogins(t, r.sock)
	require.NotZero(t, logins, "the PKCS#11 applications logged in once each")
	serving := r.servingPID()

	// The hang first, while every other device is in rotation. After a device's worker has been killed again
	// and again, its circuit breaker stays open for longer each time (failover's offence backoff, up to
	// breaker.open_max) although its new worker passes the probes: a device that hangs then is the last
	// resort for the calls sent to it, which wait for their whole request deadline.
	t.Run("a hung device's worker is recycled", func(t *testing.T) {
		dev := r.topo.Device("eastus-2")
		before := r.deviceStatus(dev.Name)
		require.NoError(t, dev.Pause())
		t.Cleanup(func() {
			if dev.Paused() {
				_ = dev.Resume()
			}
		})
		require.Eventually(t, func() bool {
			return strings.Contains(r.deviceStatus(dev.Name).WorkerExit, "unanswered")
		}, 2*time.Minute, 50*time.Millisecond, "the worker with calls unanswered is killed")
		apps.waitProgress(t, 5) // the other devices serve meanwhile
		require.NoError(t, dev.Resume())
		r.workerBack(dev.Name, before.WorkerPID, before.WorkerRestarts, "SIGSTOP")
		apps.waitProgress(t, 5)
	})

	kills := workerKills()
	for i := range kills {
		for _, d := range r.topo.Devices {
			r.signalWorker(d.Name, syscall.SIGKILL, "signal: killed")
			apps.waitProgress(t, 5)
		}
		if (i+1)%5 == 0 {
			t.Logf("%d kills per device", i+1)
		}
	}
	// Go's runtime ends a process on SIGSEGV with exit status 2, as it does for a fault inside the module.
	r.signalWorker("eastus-1", syscall.SIGSEGV, "exit status 2")
	apps.waitProgress(t, 5)

	blip := apps.check(t)
	t.Logf("the slowest call of any application through %d worker kills, a SIGSEGV and a hung device: %v",
		kills*len(r.topo.Devices), blip.Round(time.Microsecond))
	assert.Equal(t, logins, frontEndLogins(t, r.sock), "no application logged in again")
	assert.Equal(t, serving, r.servingPID(), "the sidecar process itself never restarted")
	checkWorkerEnds(t, r, kills)
}

// checkWorkerEnds: every worker end is in the status (worker_restarts), the metrics (by device and exit
// status) and the log; the faults injected are all there; the sidecar has one live worker per device and
// no zombie.
func checkWorkerEnds(t *testing.T, r *upgradeRig, kills int) {
	t.Helper()
	ends := map[string]map[string]float64{} // device -> exit status -> count
	for _, m := range scrapeFamilies(t, r.sock)["pkcs11ha_worker_exits_total"].GetMetric() {
		dev := labelOf(m, "device")
		if ends[dev] == nil {
			ends[dev] = map[string]float64{}
		}
		ends[dev][labelOf(m, "status")] += m.GetCounter().GetValue()
	}
	logs := r.logs()
	for _, d := range r.topo.Devices {
		st := r.deviceStatus(d.Name)
		var total float64
		for _, n := range ends[d.Name] {
			total += n
		}
		assert.Equal(t, float64(st.WorkerRestarts), total, "%s: every restart counted by exit status: %v", d.Name, ends[d.Name])
		assert.Equal(t, int(st.WorkerRestarts),
			strings.Count(logs, fmt.Sprintf("device worker ended; it is started again by the next probe\" device=%s ", d.Name)),
			"%s: every restart logged", d.Name)
		assert.GreaterOrEqual(t, ends[d.Name]["signal: killed"], float64(kills), "%s: its SIGKILLs", d.Name)
	}
	assert.Equal(t, float64(1), ends["eastus-1"]["exit status 2"], "the SIGSEGV: %v", ends["eastus-1"])
	assert.Contains(t, logs, "calls unanswered for", "the hung worker's end is logged with why")

	workers := sidecarProcesses(r.servingPID())
	assert.Len(t, workers, len(r.topo.Devices), "one worker per device: %v", workers)
	for pid, zombie := range workers {
		assert.False(t, zombie, "worker %d reaped", pid)
	}
}
