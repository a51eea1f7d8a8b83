package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// The p11-kit harness: four devices, each its own `p11-kit server` process behind a relay; eastus-1 and
// eastus-2 local, westus-1 and westus-2 in DR behind a one-way delay of drDelay.
const (
	drDelay     = 20 * time.Millisecond
	slowOneWay  = 5 * time.Millisecond   // the slow local device: each way, every relayed chunk
	spellLength = 50 * time.Millisecond  // spells mode: slow spells of this length ...
	spellEvery  = 500 * time.Millisecond // ... starting this far apart on average
	flickLength = 20 * time.Millisecond  // flicker mode: short slow spells ...
	flickEvery  = 100 * time.Millisecond // ... and frequent ones
	steadyAfter = 10 * time.Second       // steady mode: the window starts this long after the device turned slow
	callTimeout = 2 * time.Second        // the caller deadline of each operation (pkcs11ha's default operation_timeout)
)

type p11kitEnv struct {
	o       Options
	topo    *softhsmtest.Topology
	n       int             // config files written
	plotted map[string]bool // region-loss modes drawn (timeline.go)
}

func startP11Kit(ctx context.Context, o Options, dir string) (*p11kitEnv, error) {
	topo, err := softhsmtest.Start(ctx, softhsmtest.Options{
		Dir:        dir,
		Devices:    softhsmtest.DefaultTopology(drDelay),
		Partitions: []softhsmtest.PartitionSpec{benchPartition},
		Keys:       []softhsmtest.KeySpec{ecKey},
	})
	if err != nil {
		return nil, err
	}
	return &p11kitEnv{o: o, topo: topo, plotted: map[string]bool{}}, nil
}

func (e *p11kitEnv) close() { _ = e.topo.Close() }

// open opens a cluster over the four devices with the given policy, its metrics on a registry of its own.
func (e *p11kitEnv) open(ctx context.Context, policy string) (*pkcs11ha.Cluster, *pkcs11ha.Key, *prometheus.Registry, error) {
	e.n++
	path := filepath.Join(e.topo.Dir, fmt.Sprintf("hsm-ha-%d.yaml", e.n))
	if err := e.topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}); err != nil {
		return nil, nil, nil, err
	}
	cfg, err := pkcs11ha.LoadConfig(path)
	if err != nil {
		return nil, nil, nil, err
	}
	reg := prometheus.NewRegistry()
	cl, err := pkcs11ha.Open(ctx, cfg, pkcs11ha.WithRegisterer(reg))
	if err != nil {
		return nil, nil, nil, err
	}
	k, err := cl.Key(ctx, benchPartition.Name, ecKey.Label)
	if err != nil {
		cl.Close()
		return nil, nil, nil, err
	}
	return cl, k, reg, nil
}

func counterSum(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func isDR(dev string) bool { return strings.HasPrefix(dev, "westus") }

// ---- healthy local pair ----

// HealthyCell is one concurrency of the healthy-pair scenario: pkcs11ha over all four devices, and direct
// miekg/pkcs11 through p11-kit-client.so to eastus-1 alone (local latency, for reference).
type HealthyCell struct {
	Goroutines int
	HA         []latencySummary
	Direct     []Result
	DRShare    []float64
	Load       loadRange
}

func (e *p11kitEnv) healthy(ctx context.Context, gs []int, rounds int, runChild childRunner) ([]*HealthyCell, error) {
	cells := make([]*HealthyCell, len(gs))
	for i, g := range gs {
		cells[i] = &HealthyCell{Goroutines: g}
	}
	e1 := e.topo.Device("eastus-1")
	pub, _ := pubDER(e.topo.Keys[ecKey.Label])
	for r := range rounds {
		cl, k, _, err := e.open(ctx, "")
		if err != nil {
			return nil, err
		}
		for _, c := range cells {
			c.Load.add(loadAvg())
			l := startLoad(keySigner{k}, c.Goroutines, callTimeout)
			time.Sleep(e.o.Warmup)
			from := time.Now()
			time.Sleep(e.o.Cell)
			to := time.Now()
			s := summarize(window(l.stop(), from, to), to.Sub(from))
			dr := 0
			for dev, n := range s.ByDevice {
				if isDR(dev) {
					dr += n
				}
			}
			c.HA = append(c.HA, s)
			c.DRShare = append(c.DRShare, float64(dr)/float64(max(s.Ops, 1)))
			c.Load.add(loadAvg())
		}
		cl.Close()
		for _, c := range cells {
			res, err := runChild(Spec{
				Contender: Direct, Alg: ECP256, Goroutines: c.Goroutines, Warmup: e.o.Warmup,
				Module: e1.ModulePath, ModuleEnv: e1.ModuleEnv, TokenLabel: benchPartition.TokenLabel, PIN: benchPartition.PIN,
				KeyLabel: ecKey.Label, KeyID: ecKey.ID, PubDER: pub,
			}, e.o.Cell)
			if err != nil {
				return nil, fmt.Errorf("direct via p11-kit, round %d: %w", r, err)
			}
			c.Direct = append(c.Direct, res)
			c.Load.add(res.LoadEnd)
		}
	}
	return cells, nil
}

// ---- local region lost ----

// LossTrial is one loss of the whole local region under load.
type LossTrial struct {
	Mode         string        // "kill" (both local servers SIGKILLed) or "partition" (both relays hang)
	FirstSuccess time.Duration // from the region being lost to the first successful operation (served by DR)
	FirstDev     string
	Errors       int           // caller-visible errors from the loss until 1 s after it
	Slowest      time.Duration // slowest successful operation in flight at the loss or started in the next second
	DRp50        time.Duration // p50 of DR-served operations started from 0.5 s after the loss
	Load         float64
	goroutines   int
}

func (e *p11kitEnv) regionLoss(ctx context.Context, mode string, goroutines int, progress func(string, ...any)) (LossTrial, error) {
	tr := LossTrial{Mode: mode, Load: loadAvg(), goroutines: goroutines}
	cl, k, _, err := e.open(ctx, "")
	if err != nil {
		return tr, err
	}
	locals := []*softhsmtest.Device{e.topo.Device("eastus-1"), e.topo.Device("eastus-2")}
	restore := func() error { return nil }
	defer func() {
		_ = restore()
		cl.Close()
	}()
	l := startLoad(keySigner{k}, goroutines, callTimeout)
	time.Sleep(e.o.Warmup)

	injected := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(locals))
	for i, d := range locals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if mode == "kill" {
				errs[i] = d.Kill()
			} else {
				errs[i] = d.Hang()
			}
		}()
	}
	wg.Wait()
	t0 := time.Now() // the whole local region is gone
	restore = func() error {
		for _, d := range locals {
			var err error
			if mode == "kill" {
				err = d.Restart(context.Background())
			} else {
				err = d.Pass()
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	for _, err := range errs {
		if err != nil {
			l.stop()
			return tr, err
		}
	}
	// Keep the load on until DR has served a call after t0 and its steady state is visible (and the
	// picture's window, timeline.go, is full); 10 s at most. The workers flush their operations only at
	// stop, so the load's atomic says when DR has served.
	deadline := t0.Add(10 * time.Second)
	time.Sleep(max(1500*time.Millisecond, lossWindow))
	for !l.drSuccessAfter(t0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	ops := l.stop()
	first := time.Time{}
	var dr Latencies
	for _, o := range ops {
		if o.end.After(t0) && o.err == nil && (isDR(o.dev) || o.start.After(t0)) && (first.IsZero() || o.end.Before(first)) {
			first, tr.FirstDev = o.end, o.dev
		}
		if o.end.After(t0) && o.start.Before(t0.Add(time.Second)) {
			if o.err != nil {
				tr.Errors++
			} else {
				tr.Slowest = max(tr.Slowest, o.end.Sub(o.start))
			}
		}
		if o.err == nil && isDR(o.dev) && o.start.After(t0.Add(500*time.Millisecond)) {
			dr = append(dr, int64(o.end.Sub(o.start)))
		}
	}
	if first.IsZero() {
		return tr, fmt.Errorf("region loss (%s): no success within %v", mode, time.Since(t0).Round(time.Millisecond))
	}
	tr.FirstSuccess = first.Sub(t0)
	tr.DRp50 = dr.Quantile(0.5)
	e.plotLoss(tr, ops, injected, t0, progress)
	return tr, nil
}

// ---- one slow local device, with and without hedging ----

// SlowCell is one run of the slow-device scenario.
type SlowCell struct {
	Mode    string // "onset", "steady", "spells" or "flicker"
	Hedge   bool
	Sum     latencySummary
	P999    time.Duration
	Extra   float64 // attempts beyond one per operation, as a fraction of operations
	Hedges  float64 // hedged operations, as a fraction of operations
	E1Share float64 // share of operations served by the slow device
	Load    loadRange
	lat     Latencies // of the successful operations (timeline.go)
}

func (e *p11kitEnv) slow(ctx context.Context, mode string, hedge bool, goroutines int) (SlowCell, error) {
	c := SlowCell{Mode: mode, Hedge: hedge}
	c.Load.add(loadAvg())
	policy := ""
	if hedge {
		policy = "hedge: {enabled: true}"
	}
	cl, k, reg, err := e.open(ctx, policy)
	if err != nil {
		return c, err
	}
	defer cl.Close()
	e1 := e.topo.Device("eastus-1")
	defer e1.SetDelay(0, 0)
	l := startLoad(keySigner{k}, goroutines, callTimeout)
	time.Sleep(e.o.Warmup)

	stopSlow := make(chan struct{})
	slowDone := make(chan struct{})
	if mode == "steady" {
		// Slow from here on; measure once the router and the hedge histograms had time to learn it.
		_ = e1.SetDelay(slowOneWay, slowOneWay)
		time.Sleep(steadyAfter)
	}
	att0, ops0, h0 := counterSum(reg, "pkcs11ha_attempts_total"), counterSum(reg, "pkcs11ha_operations_total"), counterSum(reg, "pkcs11ha_hedges_total")
	from := time.Now()
	switch mode {
	case "onset", "steady":
		_ = e1.SetDelay(slowOneWay, slowOneWay) // onset: the device turns slow as the window starts
		close(slowDone)
	case "spells", "flicker":
		length, every := spellLength, spellEvery
		if mode == "flicker" {
			length, every = flickLength, flickEvery
		}
		go func() {
			defer close(slowDone)
			rng := rand.New(rand.NewPCG(uint64(from.UnixNano()), 7))
			for {
				gap := time.Duration(rng.ExpFloat64() * float64(every-length))
				select {
				case <-stopSlow:
					return
				case <-time.After(gap):
				}
				_ = e1.SetDelay(slowOneWay, slowOneWay)
				select {
				case <-stopSlow:
					return
				case <-time.After(length):
				}
				_ = e1.SetDelay(0, 0)
			}
		}()
	}
	time.Sleep(e.o.Cell)
	to := time.Now()
	close(stopSlow)
	<-slowDone
	ops := l.stop()
	att1, ops1, h1 := counterSum(reg, "pkcs11ha_attempts_total"), counterSum(reg, "pkcs11ha_operations_total"), counterSum(reg, "pkcs11ha_hedges_total")
	w := window(ops, from, to)
	c.Sum = summarize(w, to.Sub(from))
	var lat Latencies
	for _, o := range w {
		if o.err == nil {
			lat = append(lat, int64(o.end.Sub(o.start)))
		}
	}
	c.P999 = lat.Quantile(0.999)
	c.lat = lat
	if n := ops1 - ops0; n > 0 {
		c.Extra = (att1-att0)/n - 1
		c.Hedges = (h1 - h0) / n
	}
	c.E1Share = float64(c.Sum.ByDevice["eastus-1"]) / float64(max(c.Sum.Ops, 1))
	c.Load.add(loadAvg())
	return c, nil
}

// slowModes are the slow-device patterns, in table order.
// "steady" (slow since 10 s before the window) costs 13 s a run: it runs once per hedge setting.
var slowModes = []string{"onset", "steady", "spells", "flicker"}
