package pkcs11ha

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// waitLanesOpen waits until Status shows every lane of every device open (lanes 1.. open after Open, in
// the background), and every partition of a device without lanes.
func waitLanesOpen(t *testing.T, cl *Cluster) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, ds := range cl.Status() {
			if l := ds.Lanes; l != nil && l.Open < l.Total {
				return false
			}
			for _, p := range ds.Partitions {
				if !p.Open {
					return false
				}
			}
		}
		return true
	}, 15*time.Second, 10*time.Millisecond, "every lane opens: %+v", cl.Status())
}

func openLaneCluster(t *testing.T, topo *softhsmtest.Topology, policy string) *Cluster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := Open(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cl.Close()) })
	return cl
}

// TestLanesOneCallPerInstance: a p11-kit device gets policy.p11kit_client_instances module instances;
// lanes 1.. never carry two calls at once, and lane 0 takes what they cannot; every signature verifies.
func TestLanesOneCallPerInstance(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
	// A generous attempt deadline: this test is about where calls run, not how fast.
	cl := openLaneCluster(t, topo, "p11kit_client_instances: 4\nattempt_timeout: {local: 2s}")
	require.Equal(t, 4, cl.LaneCount("eastus-1"))
	d := cl.inproc(0)
	require.Len(t, d.Lanes, 4)
	waitLanesOpen(t, cl)
	require.Nil(t, d.Mod.Current().Solo, "lane 0 carries any number of calls")
	for _, l := range d.Lanes[1:] {
		require.NotNil(t, l.Mod.Current().Solo, "lanes 1.. carry one call at a time")
	}
	require.EqualValues(t, 4, loginAttempts(cl, "eastus-1", "payments"), "one login per instance")

	k, err := cl.Key(context.Background(), "payments", "ec-key")
	require.NoError(t, err)
	pub := k.Public().(*ecdsa.PublicKey)
	var worst atomic.Int64
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Add(1)
	go func() { // sample every lane's in-flight count while the signers run
		defer watch.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, l := range d.Lanes[1:] {
				if in := l.Mod.Current(); in != nil {
					if n := in.Inflight.Load(); n > worst.Load() {
						worst.Store(n)
					}
				}
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				dg := sha256.Sum256(fmt.Appendf(nil, "%d-%d", w, i))
				sig, err := k.Sign(nil, dg[:], crypto.SHA256)
				if !assertNoErr(t, err) {
					return
				}
				if !ecdsa.VerifyASN1(pub, dg[:], sig) {
					t.Errorf("invalid signature")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	watch.Wait()
	require.Equal(t, int64(1), worst.Load(), "calls ran on lanes 1.., and none ever carried more than one at once")
}

func assertNoErr(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("sign: %v", err)
		return false
	}
	return true
}

// TestLanesKillRestart: a killed server breaks every lane at once (a device error on one is the device's),
// and after the restart every lane is back on a fresh instance.
func TestLanesKillRestart(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
	cl := openLaneCluster(t, topo, "p11kit_client_instances: 3\nhealth: {interval: 200ms, down_interval: 100ms}\nbreaker: {open_base: 200ms}")
	waitLanesOpen(t, cl)
	k, err := cl.Key(context.Background(), "payments", "ec-key")
	require.NoError(t, err)
	dg := sha256.Sum256([]byte("kill"))
	_, err = k.Sign(nil, dg[:], crypto.SHA256)
	require.NoError(t, err)

	dev := topo.Devices[0]
	d := cl.inproc(0)
	var before []*devicebackend.Instance
	for _, l := range d.Lanes {
		before = append(before, l.Mod.Current())
	}
	require.NoError(t, dev.Kill())
	_, err = k.Sign(nil, dg[:], crypto.SHA256)
	require.Error(t, err)
	for i, in := range before {
		require.True(t, in.Broken.Load(), "lane %d: a device error on one lane breaks every lane's instance", i)
	}
	// Eventually: a probe may have re-opened a lane while the server was still on its way down; the next
	// probe finds it down again.
	require.Eventually(t, func() bool {
		return *cl.Status()[0].Lanes == LaneStatus{Total: 3, Open: 0}
	}, 10*time.Second, 10*time.Millisecond, "Status shows the lanes down: %+v", cl.Status()[0].Lanes)
	for range 5 { // while the probes re-load the module against the dead server, and fail to open it
		for _, p := range cl.Status()[0].Partitions {
			require.False(t, p.Open, "partition %s: not open on a dead device", p.Name)
		}
		time.Sleep(150 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, dev.Restart(ctx))
	require.Eventually(t, func() bool {
		_, err := k.Sign(nil, dg[:], crypto.SHA256)
		return err == nil && cl.Status()[0].State == "up"
	}, 15*time.Second, 50*time.Millisecond, "back after the restart: %+v", cl.Status())
	require.Eventually(t, func() bool {
		for _, l := range d.Lanes {
			if in := l.Mod.Current(); in == nil || in.Gen < 2 {
				return false
			}
		}
		return true
	}, 15*time.Second, 20*time.Millisecond, "every lane on a fresh instance")
	require.GreaterOrEqual(t, cl.Status()[0].Reinits, int64(3))
	require.Equal(t, &LaneStatus{Total: 3, Open: 3}, cl.Status()[0].Lanes)
}

// TestLanesOnlyForP11KitClient: in-process SoftHSM devices keep one instance carrying every call.
func TestLanesOnlyForP11KitClient(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "a", Region: "eastus", InProcess: true}}})
	cl := openLaneCluster(t, topo, "")
	require.Equal(t, 1, cl.LaneCount("a"))
	require.Nil(t, cl.inproc(0).Lanes)
	require.Nil(t, cl.inproc(0).Mod.Current().Solo)
	require.Nil(t, cl.Status()[0].Lanes, "no lanes to show")
}
