package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// haPolicy makes probes fast enough for tests; routing defaults (deadlines, breakers) are untouched.
const haPolicy = "health: {interval: 500ms, down_interval: 200ms}"

// Where calls go must be decided by the fault a test injects, not by how loaded the host is: with the default
// 50 ms local attempt deadline a healthy device that a busy host schedules late times out and sends calls on
// to DR. These tests give attempts deadlines no healthy device misses (killFaults: a killed device fails at
// once; pauseFaults: a paused one is left at its attempt deadline, with room for the retries inside the
// caller's deadline). What the default deadlines cost in latency is measured by make chaos.
const (
	killFaults  = haPolicy + "\nattempt_timeout: {local: 1s, dr: 2s}"
	pauseFaults = killFaults
)

// livenessWait bounds a wait for something that must happen (a device back, calls drained): reaching it
// means it does not happen, not that the host was slow. (The internal tests have the same constant.)
const livenessWait = 30 * time.Second

// loadResult is what one phase of load saw.
type loadResult struct {
	ops, failed int
	byDevice    map[string]int
	lat         []time.Duration
	errs        []error
	firstAt     map[string]time.Time // first op served by each device
}

func (r *loadResult) p(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	s := slices.Clone(r.lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func (r *loadResult) share(prefix string) float64 {
	n := 0
	for d, c := range r.byDevice {
		if strings.HasPrefix(d, prefix) {
			n += c
		}
	}
	if r.ops == 0 {
		return 0
	}
	return float64(n) / float64(r.ops)
}

// runLoad signs with workers goroutines until stop is closed; each call has its own deadline, and every
// signature is verified with crypto/ecdsa.
func runLoad(k *pkcs11ha.Key, workers int, deadline time.Duration, stop <-chan struct{}) *loadResult {
	pub := k.Public().(*ecdsa.PublicKey)
	return runOps(workers, deadline, stop, func(ctx context.Context, w, i int) error {
		d := sha256.Sum256(fmt.Appendf(nil, "w%d-%d", w, i))
		sig, err := k.SignContext(ctx, d[:], crypto.SHA256)
		if err == nil && !ecdsa.VerifyASN1(pub, d[:], sig) {
			err = errors.New("invalid signature")
		}
		return err
	})
}

// runOps runs op with workers goroutines until stop is closed, each call under its own deadline and a
// context from WithOutcome, and records what each call saw.
func runOps(workers int, deadline time.Duration, stop <-chan struct{}, op func(ctx context.Context, w, i int) error) *loadResult {
	res := &loadResult{byDevice: map[string]int{}, firstAt: map[string]time.Time{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out pkcs11ha.Outcome
			octx := pkcs11ha.WithOutcome(context.Background(), &out)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(octx, deadline)
				start := time.Now()
				err := op(ctx, w, i)
				dev := out.Device
				el := time.Since(start)
				cancel()
				mu.Lock()
				res.ops++
				res.lat = append(res.lat, el)
				if err != nil {
					res.failed++
					if len(res.errs) < 5 {
						res.errs = append(res.errs, err)
					}
				} else {
					res.byDevice[dev]++
					if _, ok := res.firstAt[dev]; !ok {
						res.firstAt[dev] = time.Now()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// phase runs load for d and returns what it saw, while fault runs (if not nil) at the start.
func phase(k *pkcs11ha.Key, d time.Duration, deadline time.Duration, fault func()) *loadResult {
	stop := make(chan struct{})
	done := make(chan *loadResult)
	go func() { done <- runLoad(k, 8, deadline, stop) }()
	if fault != nil {
		fault()
	}
	time.Sleep(d)
	close(stop)
	return <-done
}

func haCluster(t *testing.T, policy string) (*softhsmtest.Topology, *pkcs11ha.Cluster, *pkcs11ha.Key) {
	topo, cl, k, _ := haClusterReg(t, policy)
	return topo, cl, k
}

func haClusterReg(t *testing.T, policy string) (*softhsmtest.Topology, *pkcs11ha.Cluster, *pkcs11ha.Key, *prometheus.Registry) {
	t.Helper()
	topo := harnesstest.Start(t, softhsmtest.Options{})
	var logBuf softhsmtest.LogBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster log:\n%s", logBuf.String())
		}
	})
	reg := prometheus.NewRegistry()
	cl, _ := openCluster(t, topo, policy, pkcs11ha.WithLogger(slog.New(slog.NewTextHandler(&logBuf, nil))), pkcs11ha.WithRegisterer(reg))
	k, err := cl.Key(context.Background(), "payments", "ec-key")
	require.NoError(t, err)
	return topo, cl, k, reg
}

func requireNoFailures(t *testing.T, name string, r *loadResult) {
	t.Helper()
	require.Positive(t, r.ops, "%s: no operations ran", name)
	require.Zero(t, r.failed, "%s: %d of %d operations failed: %v", name, r.failed, r.ops, r.errs)
	t.Logf("%-28s ops=%5d failed=%d p50=%v p99=%v byDevice=%v", name, r.ops, r.failed, r.p(0.5), r.p(0.99), r.byDevice)
}

// TestHAKillRestartLocal: a local device killed under load costs no failed sign, traffic stays local, and
// the restarted device is back in rotation without a process restart.
func TestHAKillRestartLocal(t *testing.T) {
	topo, cl, k, reg := haClusterReg(t, killFaults)
	healthy := phase(k, time.Second, 2*time.Second, nil)
	requireNoFailures(t, "healthy", healthy)
	require.Zero(t, healthy.share("westus"), "a healthy local pair sends nothing to DR")
	require.Positive(t, healthy.byDevice["eastus-1"])
	require.Positive(t, healthy.byDevice["eastus-2"])

	dev := topo.Device("eastus-1")
	var killedAt time.Time
	killed := phase(k, 2*time.Second, 2*time.Second, func() { killedAt = time.Now(); require.NoError(t, dev.Kill()) })
	requireNoFailures(t, "eastus-1 killed", killed)
	require.Zero(t, killed.share("westus"), "the other local device takes the load, not DR")
	if at, ok := killed.firstAt["eastus-2"]; ok {
		t.Logf("first op served elsewhere %v after the kill", at.Sub(killedAt))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, dev.Restart(ctx))
	restarted := time.Now()
	stop := make(chan struct{})
	resCh := make(chan *loadResult)
	go func() { resCh <- runLoad(k, 8, 2*time.Second, stop) }()
	require.Eventually(t, func() bool {
		st := cl.Status()
		return st[0].State != "down" && st[0].Breaker == "closed"
	}, livenessWait, 50*time.Millisecond, "eastus-1 back")
	time.Sleep(500 * time.Millisecond)
	close(stop)
	after := <-resCh
	requireNoFailures(t, "after restart", after)
	at, ok := after.firstAt["eastus-1"]
	require.True(t, ok, "eastus-1 serves again after its restart: %v", after.byDevice)
	t.Logf("eastus-1 back in rotation %v after its restart", at.Sub(restarted))

	// The metrics saw it: every operation counted once, the re-init, the device errors.
	ops := healthy.ops + killed.ops + after.ops
	require.Equal(t, float64(ops), testutil.ToFloat64(counterSum(t, reg, "pkcs11ha_operations_total")))
	require.GreaterOrEqual(t, testutil.ToFloat64(counterWith(t, reg, "pkcs11ha_reinits_total", "eastus-1")), 1.0)
	// Whether a call met the dead device before its probe did depends on the host's scheduling: logged.
	t.Logf("attempts that met the dead eastus-1: %v",
		testutil.ToFloat64(counterWith(t, reg, "pkcs11ha_attempts_total", "eastus-1", "device_down")))
}

// counterSum and counterWith read metric families back from the registry as constant gauges, for
// testutil.ToFloat64: the sum over all series, or the series whose label values include all of want.
func counterSum(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	return counterWith(t, reg, name)
}

func counterWith(t *testing.T, reg *prometheus.Registry, name string, want ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, w := range want {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetValue() == w {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sum"}, func() float64 { return sum })
}

// TestHAPauseLocal: a local device hung by SIGSTOP costs callers nothing: eastus-2 carries the load. (The latency it costs, at most one attempt deadline on p99, is a bound of the chaos suite's
// hang-sigstop scenario, asserted by make chaos.)
func TestHAPauseLocal(t *testing.T) {
	topo, cl, k := haCluster(t, pauseFaults)
	// Calls must meet the paused device: make eastus-1 the preferred one first (a probe through a 50 ms
	// relay delay raises eastus-2's peak-EWMA estimate, which then decays for seconds).
	e1, e2 := topo.Device("eastus-1"), topo.Device("eastus-2")
	require.NoError(t, e2.SetDelay(50*time.Millisecond, 50*time.Millisecond))
	require.Eventually(t, func() bool {
		st := cl.Status()
		return st[1].EWMA > st[0].EWMA+20*time.Millisecond
	}, livenessWait, 10*time.Millisecond, "eastus-2's estimate rises above eastus-1's")
	require.NoError(t, e2.SetDelay(0, 0))

	// An 8 s caller deadline holds every attempt a call may make here: the paused device's attempt deadline,
	// once more on it if the host stalled meanwhile (a stalled timeout is retried on its device), eastus-2,
	// and DR's two.
	paused := phase(k, 3*time.Second, 8*time.Second, func() { require.NoError(t, e1.Pause()) })
	// Calls still in the paused server cannot have returned: each is one that met it and was left at its
	// attempt deadline.
	abandoned := cl.Status()[0].Abandoned
	// Resume before asserting: calls stuck in the paused server must return before the test ends.
	require.NoError(t, e1.Resume())
	requireNoFailures(t, "eastus-1 paused", paused)
	require.Positive(t, abandoned, "calls met the paused device and were left at their attempt deadline")
	require.Zero(t, paused.share("westus"), "eastus-2 carries the load")
	require.Eventually(t, func() bool { return cl.Status()[0].Abandoned == 0 }, livenessWait, 50*time.Millisecond,
		"abandoned calls drain after resume")
}

// TestHALocalRegionDown: with both local devices dead, DR serves every call; when they return, traffic
// fails back to the local pair.
func TestHALocalRegionDown(t *testing.T) {
	topo, cl, k := haCluster(t, killFaults)
	e1, e2 := topo.Device("eastus-1"), topo.Device("eastus-2")
	killing := phase(k, time.Second, 2*time.Second, func() {
		require.NoError(t, e1.Kill())
		require.NoError(t, e2.Kill())
	})
	requireNoFailures(t, "local region being killed", killing)
	down := phase(k, time.Second, 2*time.Second, nil)
	requireNoFailures(t, "local region down", down)
	require.Equal(t, 1.0, down.share("westus"), "DR serves everything")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, e1.Restart(ctx))
	require.NoError(t, e2.Restart(ctx))
	restarted := time.Now()
	// Failback needs traffic: half-open breakers close on successful calls. Run load in short phases until
	// one is served entirely by the local pair.
	for {
		back := phase(k, 500*time.Millisecond, 2*time.Second, nil)
		requireNoFailures(t, "failing back", back)
		if back.share("westus") == 0 && back.ops > 0 {
			t.Logf("failback complete %v after the restarts", time.Since(restarted))
			break
		}
		require.Less(t, time.Since(restarted), livenessWait, "no failback: %+v", cl.Status())
	}
	steady := phase(k, time.Second, 2*time.Second, nil)
	requireNoFailures(t, "after failback", steady)
	require.Zero(t, steady.share("westus"), "traffic back on the local pair")
}

// TestHADRHangNoEffect: a DR region that hangs does not touch a healthy local pair: no call fails or goes to
// DR. (That the local latency does not move is a bound of the chaos suite's dr-region-down scenario,
// asserted by make chaos.)
func TestHADRHangNoEffect(t *testing.T) {
	topo, _, k := haCluster(t, killFaults)
	healthy := phase(k, time.Second, time.Second, nil)
	requireNoFailures(t, "healthy", healthy)
	hung := phase(k, 2*time.Second, time.Second, func() {
		require.NoError(t, topo.Device("westus-1").Hang())
		require.NoError(t, topo.Device("westus-2").Hang())
	})
	require.NoError(t, topo.Device("westus-1").Pass())
	require.NoError(t, topo.Device("westus-2").Pass())
	requireNoFailures(t, "DR hung", hung)
	require.Zero(t, hung.share("westus"))
}

// TestHAOpenWithHungDevice: a device whose server hangs at Open (paused before its C_Initialize) costs
// Open one init_timeout, not the others their place: every other device is up when Open returns (its
// C_Initialize used to hold the process-wide module-load lock, so the devices queued behind it missed their
// own init_timeout and opened down, or Open failed outright), and the hung device joins once it resumes.
func TestHAOpenWithHungDevice(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{})
	hung := topo.Device("eastus-1") // first in config order: its load is the first to start
	require.NoError(t, hung.Pause())
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = hung.Resume()
		}
	})
	// The device stays paused until Open has returned (openCluster gives Open 20 s): Open returning at all
	// shows it is bounded by init_timeout, not by the device.
	start := time.Now()
	cl, _ := openCluster(t, topo, killFaults+"\ninit_timeout: 2s")
	took := time.Since(start)
	t.Logf("Open took %v with eastus-1 hung", took)
	for _, st := range cl.Status() {
		if st.Name == "eastus-1" {
			require.Equal(t, "down", st.State)
			continue
		}
		require.Equal(t, "up", st.State, "%s is not held up by the hung device (Open took %v): %s", st.Name, took, st.Reason)
	}

	k, err := cl.Key(context.Background(), "payments", "ec-key")
	require.NoError(t, err)
	signOn := func() string {
		var out pkcs11ha.Outcome
		d := sha256.Sum256([]byte("open with a hung device"))
		sig, err := k.SignContext(pkcs11ha.WithOutcome(context.Background(), &out), d[:], crypto.SHA256)
		require.NoError(t, err)
		require.True(t, ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig))
		return out.Device
	}
	require.Equal(t, "eastus-2", signOn(), "the local device that is up serves")

	require.NoError(t, hung.Resume())
	resumed = true
	require.Eventually(t, func() bool {
		i := slices.IndexFunc(cl.Status(), func(st pkcs11ha.DeviceStatus) bool { return st.Name == "eastus-1" })
		return cl.Status()[i].State == "up"
	}, livenessWait, 20*time.Millisecond,
		"the device that hung at Open comes up without a restart")
	// Sequential calls go to the lower latency estimate; eastus-1's was reset to the initial guess by its
	// re-init, so slow eastus-2 down (5 ms each way) for eastus-1 to be the one they pick.
	require.NoError(t, topo.Device("eastus-2").SetDelay(5*time.Millisecond, 5*time.Millisecond))
	require.Eventually(t, func() bool { return signOn() == "eastus-1" }, livenessWait, 5*time.Millisecond,
		"and serves")
}
