package pkcs11ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Option configures Open.
type Option func(*openOptions)

type openOptions struct {
	logger    *slog.Logger
	reg       prometheus.Registerer
	workerCmd []string
}

// WithWorkerCommand sets the command that starts a device worker under policy.isolation "process": a
// program whose main calls MaybeRunWorker first (the default is this program's own binary, with no
// arguments). The arguments are for the process list only; the worker learns everything it needs from
// its parent.
func WithWorkerCommand(path string, args ...string) Option {
	return func(o *openOptions) { o.workerCmd = append([]string{path}, args...) }
}

// WithLogger logs state changes (each once) and recoveries to l.
func WithLogger(l *slog.Logger) Option { return func(o *openOptions) { o.logger = l } }

// WithRegisterer registers the cluster's Prometheus collectors on r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *openOptions) { o.reg = r } }

// Open loads every device's module, resolves the partitions' tokens, logs in and checks that every device
// holds the same keys. Devices that are down now are retried in the background; Open fails only when the
// config is invalid or no device at all could be opened. The cluster runs on its own copy of cfg.
func Open(ctx context.Context, cfg *Config, opts ...Option) (*Cluster, error) {
	if cfg == nil {
		return nil, errors.New("pkcs11ha: nil config")
	}
	s, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	o := openOptions{}
	for _, f := range opts {
		f(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if s.own.Isolation == IsolationProcess {
		if s.workerCmd = o.workerCmd; s.workerCmd == nil {
			exe, err := selfExe()
			if err != nil {
				return nil, fmt.Errorf("pkcs11ha: policy.isolation process: finding this program's binary: %w", err)
			}
			s.workerCmd = []string{exe}
		}
	}
	cl, err := newCluster(s, o)
	if err != nil {
		return nil, err
	}
	up, err := cl.openDevices(ctx)
	if err != nil {
		cl.abort()
		return nil, err
	}
	// Fix each key's reference by majority over every device that opened, not over whichever finished
	// first: a device holding a different key must not become the reference because it was fastest.
	// Destroyed keys (tombstones) are known first (keysync.go).
	cl.loadTombstones(ctx)
	cl.checkKeys()
	if err := cl.startMonitors(up); err != nil {
		cl.abort()
		return nil, err
	}
	cl.startKeySync()
	return cl, nil
}

// newCluster builds the cluster of settings s: metrics, router, key catalogue and one device per
// configured device, holding its module (not loaded yet).
func newCluster(s *settings, o openOptions) (*Cluster, error) {
	cl := &Cluster{s: s, log: o.logger}
	m, err := newMetrics(s, o.reg)
	if err != nil {
		return nil, err
	}
	cl.metrics = m
	rc := s.router
	rc.Observer = &observer{cl: cl}
	if cl.router, err = failover.New(rc, s.members); err != nil {
		return nil, fmt.Errorf("pkcs11ha: %w", err)
	}
	for _, p := range s.cfg.Partitions {
		cl.parts = append(cl.parts, &clusterPartition{name: p.Name, keys: map[string]*keyEntry{}, secrets: map[string]*secretEntry{}})
	}
	bs := s.backend() // read-only in the backend: one for every device
	for i, dc := range s.cfg.Devices {
		be, err := newBackend(s, bs, i, cl.log, cl.metrics)
		if err != nil {
			cl.abort()
			return nil, err
		}
		// No hooks yet: until Open has built the monitors (startMonitors), a device found down has no monitor
		// to tell, and Open reads its state from the open itself.
		cl.devices = append(cl.devices, &clusterDevice{idx: i, name: dc.Name, cfg: dc, be: be})
	}
	m.stuck.cl.Store(cl) // the devices exist: the collector may read them
	return cl, nil
}

// openDevices opens every device concurrently, each bounded by init_timeout (a hung device must not stall
// Open), and reports which are up. It fails only when none is.
func (cl *Cluster) openDevices(ctx context.Context) (up []bool, err error) {
	errs := make([]error, len(cl.devices))
	var wg sync.WaitGroup
	for i, d := range cl.devices {
		wg.Go(func() {
			octx, cancel := context.WithTimeout(ctx, cl.s.own.InitTimeout)
			defer cancel()
			errs[i] = d.be.Open(octx)
		})
	}
	wg.Wait()
	up = make([]bool, len(cl.devices))
	anyUp := false
	for i, err := range errs {
		up[i] = err == nil
		anyUp = anyUp || up[i]
		if err != nil {
			cl.log.Warn("device not available at open; retrying in the background", "device", cl.devices[i].name, "err", err)
		}
	}
	if !anyUp {
		return nil, fmt.Errorf("pkcs11ha: no device could be opened: %w", errors.Join(errs...))
	}
	return up, nil
}

// startMonitors starts one health monitor per device, from what Open found (up or down), and has each
// probe at once: routing on the initial-latency guess for a whole probe interval would be blind.
func (cl *Cluster) startMonitors(up []bool) error {
	for i, d := range cl.devices {
		initial := health.StateDown
		if up[i] {
			initial = health.StateUp
		}
		m, err := cl.newMonitor(i, d, initial)
		if err != nil { // compile resolved the monitor settings: cannot happen
			return fmt.Errorf("pkcs11ha: %w", err)
		}
		cl.monitors = append(cl.monitors, m)
		cl.router.SetUp(i, up[i])
		cl.metrics.deviceState(d.name, initial) // OnChange reports changes only
	}
	// The backends' hooks only once every monitor exists: a worker that dies from here on marks its monitor
	// down. Installed before (as they were), a death during Open raced with the monitors being built, and
	// could index one not built yet (a panic).
	for _, d := range cl.devices {
		d.be.SetHooks(cl.checkKeys, func(reason string) { cl.monitors[d.idx].MarkDown(reason) })
	}
	for _, m := range cl.monitors {
		m.Start()
		m.ProbeNow()
	}
	return nil
}

// abort undoes a failed Open: the router stops, the module references are released.
func (cl *Cluster) abort() {
	cl.router.Close()
	cl.releaseDevices()
}

func (cl *Cluster) newMonitor(i int, d *clusterDevice, initial health.State) (*health.Monitor, error) {
	mc := cl.s.monitor
	mc.Name, mc.InitialState = d.name, initial
	// A recovery running past the probe timeout finishes on its own; the next probe sees it.
	mc.OnChange = func(old, cur health.Status) {
		if old.State == health.StateDown && cur.State != health.StateDown {
			// What was measured before the outage says nothing about the device now.
			cl.router.ResetLatency(i)
			cl.triggerKeySync() // it may have missed key creations and destructions
		}
		cl.router.SetUp(i, cur.State != health.StateDown)
		cl.metrics.deviceState(d.name, cur.State)
		lvl := slog.LevelInfo
		if cur.State != health.StateUp {
			lvl = slog.LevelWarn
		}
		cl.log.Log(context.Background(), lvl, "device state changed", "device", d.name,
			"from", old.State.String(), "to", cur.State.String(), "reason", cur.Reason)
	}
	return health.NewMonitor(mc, func(ctx context.Context) error {
		cl.watchPINFiles()
		start := time.Now()
		reinits := d.be.Counts().Reinits
		err := d.be.Probe(ctx, cl.othersServing(d))
		if err == nil && cl.s.own.HealthKey != "" {
			err = cl.healthKeySign(ctx, d)
		}
		after := d.be.Counts()
		cl.metrics.retired.WithLabelValues(d.name).Set(float64(after.Retired))
		if err == nil {
			if after.Reinits != reinits {
				// A fresh instance: what we knew about its latency is stale.
				cl.router.ResetLatency(i)
				cl.metrics.reinits.WithLabelValues(d.name).Inc()
				cl.log.Info("device re-initialised", "device", d.name)
			} else if el := time.Since(start); el <= cl.s.monitor.Timeout {
				// A probe that outlived its deadline (blocked on a paused server) is not a latency sample:
				// seconds of it would keep a resumed device out of rotation for a minute. One slower than
				// the attempt timeout is a stall's penalty, not a peak (ObserveProbe).
				cl.router.ObserveProbe(i, el)
			}
		}
		return err
	})
}

// othersServing reports whether another device on d's module instance is up: then a full re-init of the
// shared instance would hurt it, so d only reopens sessions.
func (cl *Cluster) othersServing(d *clusterDevice) bool {
	for j, o := range cl.devices {
		if o != d && d.be.Shares(o.be) && j < len(cl.monitors) && cl.monitors[j].Status().State != health.StateDown {
			return true
		}
	}
	return false
}

// healthKeySign signs a fixed digest with policy.health_key on device d, in the first partition holding it.
func (cl *Cluster) healthKeySign(ctx context.Context, d *clusterDevice) error {
	label := cl.s.own.HealthKey
	for pi, cp := range cl.parts {
		cp.mu.RLock()
		e := cp.keys[label]
		cp.mu.RUnlock()
		if e == nil || e.mask.Load()&(1<<uint(d.idx)) == 0 {
			continue
		}
		digest := make([]byte, 32)
		plan, err := planSign(e.pub, digest, healthHash{})
		if err != nil {
			return err
		}
		k := &Key{cl: cl, pidx: pi, part: cp.name, entry: e}
		_, err = cl.runOn(ctx, d.idx, pi, plan.op(e), k.check(plan, digest, healthHash{}))
		return err
	}
	return fmt.Errorf("health key %q not on this device", label)
}

// selfExe is the binary a worker is started from: on Linux /proc/self/exe, the very file this process
// runs even after an upgrade replaced the one at its path (a worker restarted by the old process must
// speak its protocol); elsewhere the path of the executable.
func selfExe() (string, error) {
	const proc = "/proc/self/exe"
	if _, err := os.Stat(proc); err == nil {
		return proc, nil
	}
	return os.Executable()
}
