package pkcs11ha

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Cluster is a set of devices holding the same partitions, with routing, breakers, health probes and
// recovery. It is safe for concurrent use.
type Cluster struct {
	s        *settings
	devices  []*device
	router   *failover.Router
	monitors []*health.Monitor
	parts    []*clusterPartition
	metrics  *metrics
	log      *slog.Logger
	closed   atomic.Bool
	keysMu   sync.Mutex // serialises key-consistency checks
	closeOne sync.Once
}

// clusterPartition is the key catalogue of one partition across devices.
type clusterPartition struct {
	name string
	mu   sync.RWMutex
	keys map[string]*keyEntry
}

// keyEntry is one (partition, label): the reference public key and the devices that hold it.
type keyEntry struct {
	label    string
	id       []byte
	alg      string
	pub      any
	pubDER   []byte
	mask     atomic.Uint64                     // devices that hold exactly this key
	excluded atomic.Pointer[map[string]string] // device -> reason
}

// Option configures Open.
type Option func(*openOptions)

type openOptions struct {
	logger *slog.Logger
	reg    prometheus.Registerer
}

// WithLogger logs state changes (each once) and recoveries to l.
func WithLogger(l *slog.Logger) Option { return func(o *openOptions) { o.logger = l } }

// WithRegisterer registers the cluster's Prometheus collectors on r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *openOptions) { o.reg = r } }

// Open loads every device's module, resolves the partitions' tokens, logs in and checks that every device
// holds the same keys. Devices that are down now are retried in the background; Open fails only when the
// config is invalid or no device at all could be opened.
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
	cl := &Cluster{s: s, log: o.logger}
	m, err := newMetrics(s.cfg.Devices, o.reg)
	if err != nil {
		return nil, err
	}
	cl.metrics = m
	rc := s.router
	rc.Observer = &observer{cl: cl}
	router, err := failover.New(rc, s.members)
	if err != nil {
		return nil, fmt.Errorf("pkcs11ha: %w", err)
	}
	cl.router = router
	cfg = &s.cfg

	for i := range cfg.Partitions {
		cl.parts = append(cl.parts, &clusterPartition{name: cfg.Partitions[i].Name, keys: map[string]*keyEntry{}})
	}
	for i, dc := range cfg.Devices {
		h, err := modules.acquire(dc.Module, dc.ModuleEnv, s.own.InitTimeout)
		if err != nil {
			cl.releaseDevices()
			router.Close()
			return nil, &ConfigError{Field: fmt.Sprintf("devices[%s].module", dc.Name), Msg: err.Error()}
		}
		d := &device{idx: i, name: dc.Name, cfg: dc, set: &s.own, mod: h}
		for pi := range cfg.Partitions {
			d.parts = append(d.parts, &devPartition{dev: d, cfg: &cfg.Partitions[pi], pin: s.pins[pi]})
		}
		d.onDown = func(reason string) { cl.monitors[d.idx].MarkDown(reason) }
		cl.devices = append(cl.devices, d)
	}

	// Open devices concurrently, each bounded by init_timeout: a hung device must not stall Open.
	openErrs := make([]error, len(cl.devices))
	var wg sync.WaitGroup
	for i, d := range cl.devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			octx, cancel := context.WithTimeout(ctx, s.own.InitTimeout)
			defer cancel()
			openErrs[i] = d.open(octx)
		}()
	}
	wg.Wait()
	up := 0
	for i, err := range openErrs {
		if err == nil {
			up++
			continue
		}
		cl.log.Warn("device not available at open; retrying in the background", "device", cl.devices[i].name, "err", err)
	}
	if up == 0 {
		cl.releaseDevices()
		router.Close()
		return nil, fmt.Errorf("pkcs11ha: no device could be opened: %w", errors.Join(openErrs...))
	}
	// Fix each key's reference by majority over every device that opened, not over whichever finished
	// first: a device holding a different key must not become the reference because it was fastest.
	cl.checkKeys(nil)
	for _, d := range cl.devices {
		d.onKeys = cl.checkKeys
	}

	for i, d := range cl.devices {
		initial := health.StateUp
		if openErrs[i] != nil {
			initial = health.StateDown
		}
		m, err := cl.newMonitor(i, d, initial)
		if err != nil { // compile resolved the monitor settings: cannot happen
			cl.releaseDevices()
			router.Close()
			return nil, fmt.Errorf("pkcs11ha: %w", err)
		}
		cl.monitors = append(cl.monitors, m)
		router.SetUp(i, initial != health.StateDown)
	}
	for _, m := range cl.monitors {
		m.Start()
		m.ProbeNow() // measure every device now rather than routing on the initial-latency guess for 5 s
	}
	return cl, nil
}

func (cl *Cluster) newMonitor(i int, d *device, initial health.State) (*health.Monitor, error) {
	var hk func(ctx context.Context) error
	if cl.s.own.HealthKey != "" {
		hk = func(ctx context.Context) error { return cl.healthKeySign(ctx, d) }
	}
	mc := cl.s.monitor
	mc.Name, mc.InitialState = d.name, initial
	// A recovery running past the probe timeout finishes on its own; the next probe sees it.
	mc.OnChange = func(old, cur health.Status) {
		if old.State == health.StateDown && cur.State != health.StateDown {
			// What was measured before the outage says nothing about the device now.
			cl.router.ResetLatency(i)
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
		start := time.Now()
		reinits := d.mod.reinits.Load()
		err := d.probe(ctx, cl.othersServing(d), hk)
		if err == nil {
			if d.mod.reinits.Load() != reinits {
				// A fresh instance: what we knew about its latency is stale.
				cl.router.ResetLatency(i)
				cl.metrics.reinits.WithLabelValues(d.name).Inc()
				cl.log.Info("device re-initialised", "device", d.name)
			} else if el := time.Since(start); el <= cl.s.monitor.Timeout {
				// A probe that outlived its deadline (blocked on a paused server) is not a latency sample:
				// seconds of it would keep a resumed device out of rotation for a minute.
				cl.router.Latency(i).Observe(el)
			}
		}
		return err
	})
}

// othersServing reports whether another device on d's module instance is up: then a full re-init of the
// shared instance would hurt it, so d only reopens sessions.
func (cl *Cluster) othersServing(d *device) bool {
	for j, o := range cl.devices {
		if o != d && o.mod == d.mod && j < len(cl.monitors) && cl.monitors[j].Status().State != health.StateDown {
			return true
		}
	}
	return false
}

// healthKeySign signs a fixed digest with policy.health_key on device d, in the first partition holding it.
func (cl *Cluster) healthKeySign(ctx context.Context, d *device) error {
	label := cl.s.own.HealthKey
	for pi, cp := range cl.parts {
		cp.mu.RLock()
		e := cp.keys[label]
		cp.mu.RUnlock()
		if e == nil || e.mask.Load()&(1<<uint(d.idx)) == 0 {
			continue
		}
		plan, err := planSign(e.pub, make([]byte, 32), healthHash{})
		if err != nil {
			return err
		}
		_, err = d.parts[pi].run(ctx, label, e.pubDER, plan.op())
		return err
	}
	return fmt.Errorf("health key %q not on this device", label)
}

// checkKeys rebuilds the key catalogue after device d (re)opened: the first devices to report a label fix
// its reference public key (by majority, config order breaking ties); a device that lacks the key or holds a
// different one is excluded for that key.
func (cl *Cluster) checkKeys(_ *device) {
	cl.keysMu.Lock()
	defer cl.keysMu.Unlock()
	for pi, cp := range cl.parts {
		type devKeys struct {
			idx  int
			keys map[string]*keyObject
		}
		var open []devKeys
		labels := map[string]bool{}
		for _, d := range cl.devices {
			st := d.parts[pi].st.Load()
			if st == nil {
				continue
			}
			st.keysMu.RLock()
			m := make(map[string]*keyObject, len(st.keys))
			for l, k := range st.keys {
				m[l] = k
				labels[l] = true
			}
			st.keysMu.RUnlock()
			open = append(open, devKeys{d.idx, m})
		}
		cp.mu.Lock()
		for label := range labels {
			e := cp.keys[label]
			if e == nil {
				// Majority vote on the public key among the devices that have the label.
				var best *keyObject
				bestN := 0
				for _, dk := range open {
					k := dk.keys[label]
					if k == nil {
						continue
					}
					n := 0
					for _, o := range open {
						if ok := o.keys[label]; ok != nil && bytes.Equal(ok.pubDER, k.pubDER) {
							n++
						}
					}
					if n > bestN {
						best, bestN = k, n
					}
				}
				e = &keyEntry{label: label, id: best.id, alg: best.alg, pub: best.pub, pubDER: best.pubDER}
				cp.keys[label] = e
			}
			var mask uint64
			excl := map[string]string{}
			for _, d := range cl.devices {
				st := d.parts[pi].st.Load()
				if st == nil {
					if why := d.parts[pi].credFatal.Load(); why != nil {
						excl[d.name] = "partition unusable: " + *why
					}
					continue
				}
				k := st.key(label)
				switch {
				case k == nil:
					excl[d.name] = "key missing on this device"
				case !bytes.Equal(k.pubDER, e.pubDER):
					excl[d.name] = "different public key under the same label"
				default:
					mask |= 1 << uint(d.idx)
				}
			}
			old := e.excluded.Load()
			if old == nil || len(*old) < len(excl) {
				for dn, why := range excl {
					if old == nil || (*old)[dn] != why {
						cl.metrics.keyInconsistent.WithLabelValues(dn, cp.name, label).Inc()
						cl.log.Warn("device excluded for key", "device", dn, "partition", cp.name, "key", label, "reason", why)
					}
				}
			}
			e.mask.Store(mask)
			e.excluded.Store(&excl)
		}
		cp.mu.Unlock()
	}
}

// Key returns the key with the given label in the named partition.
func (cl *Cluster) Key(ctx context.Context, partition, label string) (*Key, error) {
	if cl.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for pi, cp := range cl.parts {
		if cp.name != partition {
			continue
		}
		cp.mu.RLock()
		e := cp.keys[label]
		cp.mu.RUnlock()
		if e == nil {
			return nil, fmt.Errorf("%w: %q in partition %q", ErrUnknownKey, label, partition)
		}
		return &Key{cl: cl, pidx: pi, part: partition, entry: e}, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

// Keys lists the keys of a partition, sorted by label.
func (cl *Cluster) Keys(partition string) ([]KeyInfo, error) {
	for _, cp := range cl.parts {
		if cp.name != partition {
			continue
		}
		cp.mu.RLock()
		defer cp.mu.RUnlock()
		out := make([]KeyInfo, 0, len(cp.keys))
		for _, e := range cp.keys {
			out = append(out, cl.keyInfo(e))
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
		return out, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

func (cl *Cluster) keyInfo(e *keyEntry) KeyInfo {
	ki := KeyInfo{Label: e.label, ID: hexID(e.id), Algorithm: e.alg, Public: e.pub, Excluded: map[string]string{}}
	mask := e.mask.Load()
	for _, d := range cl.devices {
		if mask&(1<<uint(d.idx)) != 0 {
			ki.Devices = append(ki.Devices, d.name)
		}
	}
	if ex := e.excluded.Load(); ex != nil {
		for k, v := range *ex {
			ki.Excluded[k] = v
		}
	}
	return ki
}

// Info returns the KeyInfo of this key.
func (k *Key) Info() KeyInfo { return k.cl.keyInfo(k.entry) }

// do routes one operation for key k through the failover layer and names the device that served it.
func (cl *Cluster) do(ctx context.Context, op string, k *Key, fn opFunc) ([]byte, string, error) {
	if cl.closed.Load() {
		return nil, "", ErrClosed
	}
	mask := k.entry.mask.Load()
	if mask == 0 {
		return nil, "", fmt.Errorf("%w: no device holds key %q of partition %q", ErrNoDevice, k.entry.label, k.part)
	}
	start := time.Now()
	out, res, err := failover.Do(ctx, cl.router, op, failover.Mask(mask), func(ctx context.Context, m int) ([]byte, error) {
		return cl.devices[m].parts[k.pidx].run(ctx, k.entry.label, k.entry.pubDER, fn)
	})
	err = fromRouter(err)
	dev := "none"
	if err == nil && res.Member >= 0 && res.Member < len(cl.devices) {
		dev = cl.devices[res.Member].name
	}
	cl.metrics.operation(op, dev, res, err, time.Since(start))
	return out, dev, err
}

// LoginAttempts returns how many times C_Login was called for partition on device (for tests and audits).
func (cl *Cluster) LoginAttempts(device, partition string) int64 {
	for _, d := range cl.devices {
		if d.name != device {
			continue
		}
		for _, p := range d.parts {
			if p.cfg.Name == partition {
				return p.logins.Load()
			}
		}
	}
	return 0
}

// Close stops probes and releases the modules. It is bounded by policy.close_timeout: idle module instances
// are finalised, instances with calls stuck in them are left alone.
func (cl *Cluster) Close() error {
	cl.closeOne.Do(func() {
		cl.closed.Store(true)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, m := range cl.monitors {
				m.Stop()
			}
			cl.router.Close()
			cl.releaseDevices()
		}()
		select {
		case <-done:
		case <-time.After(cl.s.own.CloseTimeout):
			cl.log.Warn("close timed out; abandoning hung calls", "timeout", cl.s.own.CloseTimeout)
		}
	})
	return nil
}

func (cl *Cluster) releaseDevices() {
	for _, d := range cl.devices {
		d.close(cl.s.own.CloseTimeout)
	}
}

// Config returns a copy of the configuration the cluster runs with, its policy holding the values in
// effect (defaults included).
func (cl *Cluster) Config() *Config {
	c := cl.s.cfg.clone()
	return &c
}
