package pkcs11ha

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// stuckPolicy: a short re-init grace and quick probes and breakers, so a test sees a retirement and the
// recovery after it in seconds.
const stuckPolicy = "reinit_grace: 300ms\nhealth: {interval: 200ms, down_interval: 100ms}\nbreaker: {open_base: 200ms, open_max: 400ms}\n"

// strandCalls opens a cluster on one p11-kit device, holds the device's current connection (the calls on
// the cluster's module instance block, a fresh instance would get through) and makes n signatures that
// are abandoned at their attempt deadline. It returns the cluster, the device and the registry.
func strandCalls(t *testing.T, policy string, n int) (*Cluster, *softhsmtest.Device, *prometheus.Registry) {
	t.Helper()
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
	dev := topo.Devices[0]
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := Open(ctx, cfg, WithRegisterer(reg))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cl.Close()) })
	t.Cleanup(func() { _ = dev.Pass() }) // runs first: the held calls return before Close
	waitLanesOpen(t, cl)

	k, err := cl.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	d := sha256.Sum256([]byte("stuck"))
	_, err = k.Sign(nil, d[:], crypto.SHA256)
	require.NoError(t, err)

	require.NoError(t, dev.HoldConnections())
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := k.SignContext(sctx, d[:], crypto.SHA256)
			assert.Error(t, err, "the only device's connection is held")
		}()
	}
	wg.Wait()
	require.GreaterOrEqual(t, cl.Status()[0].Abandoned, n, "the held calls are abandoned on the device: %+v", cl.Status())
	return cl, dev, reg
}

// retire has the device's module instances re-initialised, as a device error would: after the grace, the
// instances with held calls in them are retired.
func retire(t *testing.T, cl *Cluster) error {
	t.Helper()
	d := cl.inproc(0)
	d.MarkInstanceDown(d.Mod.Cur.Load())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := d.RecoverIfNeeded(ctx, false)
	// Lanes 1.. recover in the background, one at a time.
	require.Eventually(t, func() bool { return !d.Recovering.Load() && d.RetiredCount() > 0 || err != nil },
		10*time.Second, 10*time.Millisecond)
	return err
}

func signOK(cl *Cluster) bool {
	k, err := cl.Key(context.Background(), "payments", "ec-key")
	if err != nil {
		return false
	}
	d := sha256.Sum256([]byte("after"))
	sig, err := k.Sign(nil, d[:], crypto.SHA256)
	return err == nil && ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig)
}

// TestStuckCallsLeaveTheDevice: calls stuck in a retired module instance stop counting against their
// device the moment it is retired (not abandoned, no capacity, not in its state): the device is up on its
// fresh instance and serves, while the stuck calls are reported per device, in total and in metrics,
// until they return.
func TestStuckCallsLeaveTheDevice(t *testing.T) {
	cl, dev, reg := strandCalls(t, stuckPolicy, 3)
	require.NoError(t, retire(t, cl))

	st := cl.Status()[0]
	require.Zero(t, st.Abandoned, "calls in a retired instance are not the device's abandoned calls")
	require.Zero(t, st.InFlight, "nor do they hold its capacity")
	require.Positive(t, st.RetiredInstances)
	require.GreaterOrEqual(t, st.StuckCalls, int64(3), "the held signatures (and any probe held with them) are stuck calls")
	total := cl.StuckCalls()
	require.Equal(t, st.StuckCalls, total.Calls)
	require.Equal(t, 1000, total.Limit)
	require.GreaterOrEqual(t, total.OSThreads, int(total.Calls), "each stuck call holds an OS thread")
	require.Equal(t, float64(st.StuckCalls), testutil.ToFloat64(stuckGauge(t, reg, "eastus-1")))

	require.Eventually(t, func() bool { return signOK(cl) && cl.Status()[0].State == "up" }, 10*time.Second, 20*time.Millisecond,
		"the device serves on its fresh instance and is up: %+v", cl.Status())
	require.Positive(t, cl.Status()[0].StuckCalls, "while the old calls are still stuck")

	require.NoError(t, dev.Pass())
	require.Eventually(t, func() bool { return cl.Status()[0].StuckCalls == 0 }, 10*time.Second, 10*time.Millisecond,
		"stuck calls that return stop counting")
	require.Zero(t, cl.StuckCalls().Calls)
	require.Zero(t, testutil.ToFloat64(stuckGauge(t, reg, "eastus-1")))
	require.Equal(t, "up", cl.Status()[0].State)
}

// TestStuckCallsCap: a retirement that would take the stuck calls past policy.max_stuck_calls is refused;
// the device (one module instance here) stays down with a reason that says so, and comes back once the
// calls return.
func TestStuckCallsCap(t *testing.T) {
	cl, dev, _ := strandCalls(t, stuckPolicy+"max_stuck_calls: 2\np11kit_client_instances: 1\n", 3)
	err := retire(t, cl)
	require.ErrorContains(t, err, "max_stuck_calls 2")
	st := cl.Status()[0]
	require.Zero(t, st.StuckCalls, "nothing was retired")
	require.Zero(t, st.RetiredInstances)
	require.Eventually(t, func() bool {
		st := cl.Status()[0]
		return st.State == "down" && st.LastError != "" && strings.Contains(st.Reason, "max_stuck_calls")
	}, 10*time.Second, 20*time.Millisecond, "down, saying why: %+v", cl.Status())

	require.NoError(t, dev.Pass()) // the calls return: the instance is finalised, not retired
	require.Eventually(t, func() bool { return signOK(cl) && cl.Status()[0].State == "up" }, 15*time.Second, 20*time.Millisecond,
		"back once the calls returned: %+v", cl.Status())
	require.Zero(t, cl.Status()[0].StuckCalls)
	require.Zero(t, cl.Status()[0].RetiredInstances)
}

// stuckGauge reads pkcs11ha_stuck_calls{device} back from the registry.
func stuckGauge(t *testing.T, reg *prometheus.Registry, device string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	v := -1.0
	for _, mf := range mfs {
		if mf.GetName() != "pkcs11ha_stuck_calls" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "device" && lp.GetValue() == device {
					v = m.GetGauge().GetValue()
				}
			}
		}
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "v"}, func() float64 { return v })
}
