package pkcs11ha

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// metrics holds the cluster's Prometheus collectors. They exist even without a Registerer so the code
// paths stay the same; registering is what exposes them.
type metrics struct {
	attempts        *prometheus.CounterVec   // device, operation, outcome
	attemptLatency  *prometheus.HistogramVec // device, operation
	operations      *prometheus.CounterVec   // operation, outcome
	opLatency       *prometheus.HistogramVec // operation
	breaker         *prometheus.GaugeVec     // device (0 closed, 1 half-open, 2 open)
	state           *prometheus.GaugeVec     // device (0 up, 1 degraded, 2 down)
	failovers       *prometheus.CounterVec   // operation
	spills          *prometheus.CounterVec   // operation
	retries         *prometheus.CounterVec   // operation
	hedges          *prometheus.CounterVec   // operation
	abandoned       *prometheus.GaugeVec     // device
	reinits         *prometheus.CounterVec   // device
	keyInconsistent *prometheus.CounterVec   // device, partition, key
	info            *prometheus.GaugeVec     // device, region, tier (always 1): joins per-device series to tiers
	retired         *prometheus.GaugeVec     // device
	retiredMax      prometheus.Gauge
	stuck           *stuckCollector        // stuck calls in retired instances (stuckcalls.go)
	badSignatures   *prometheus.CounterVec // device (verify.go)
	workerStarts    *prometheus.CounterVec // device (internal/devicebackend/worker.go)
	workerExits     *prometheus.CounterVec // device, status ("signal: killed", "exit status 2")

	attemptsC       childCache[prometheus.Counter]
	attemptLatencyC childCache[prometheus.Observer]
	operationsC     childCache[prometheus.Counter]
	opLatencyC      childCache[prometheus.Observer]
}

func newMetrics(s *settings, reg prometheus.Registerer) (*metrics, error) {
	buckets := []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m := &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "attempts_total",
			Help: "PKCS#11 attempts by device, operation and outcome class."}, []string{"device", "operation", "outcome"}),
		attemptLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "pkcs11ha", Name: "attempt_duration_seconds",
			Help: "Latency of single attempts on a device.", Buckets: buckets}, []string{"device", "operation"}),
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "operations_total",
			Help: "Operations as the caller saw them, by operation, serving device and outcome."}, []string{"operation", "device", "outcome"}),
		opLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "pkcs11ha", Name: "operation_duration_seconds",
			Help: "Latency of operations as the caller saw them, retries included.", Buckets: buckets}, []string{"operation"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pkcs11ha", Name: "breaker_state",
			Help: "Circuit breaker state per device: 0 closed, 1 half-open, 2 open."}, []string{"device"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pkcs11ha", Name: "device_state",
			Help: "Health state per device: 0 up, 1 degraded, 2 down."}, []string{"device"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "failovers_total",
			Help: "Attempts retried on another device."}, []string{"operation"}),
		spills: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "dr_spills_total",
			Help: "Attempts sent to a DR tier."}, []string{"operation"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "retries_total",
			Help: "Operations that needed more than one attempt."}, []string{"operation"}),
		hedges: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "hedges_total",
			Help: "Backup attempts started by hedging."}, []string{"operation"}),
		abandoned: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pkcs11ha", Name: "abandoned_calls",
			Help: "Calls past their deadline still running in a device's module."}, []string{"device"}),
		reinits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "reinits_total",
			Help: "Module re-initialisations (or fresh instances) per device."}, []string{"device"}),
		keyInconsistent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "key_consistency_failures_total",
			Help: "Times a device was excluded for a key it lacks or holds differently."}, []string{"device", "partition", "key"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pkcs11ha", Name: "device_info",
			Help: "Always 1: each device's region and routing tier (0 local, 1 DR)."}, []string{"device", "region", "tier"}),
		retired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pkcs11ha", Name: "retired_instances",
			Help: "Module instances of a device retired with calls still stuck in them (updated at each probe)."}, []string{"device"}),
		retiredMax: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pkcs11ha", Name: "max_retired_instances",
			Help: "policy.max_retired_instances: past it a device stays down (0: no cap of its own; pkcs11ha_stuck_calls_limit bounds them)."}),
	}
	m.stuck = newStuckCollector()
	m.badSignatures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "bad_signatures_total",
		Help: "Signatures a device returned that did not verify (never returned to the caller; the device is taken out)."}, []string{"device"})
	m.workerStarts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "worker_starts_total",
		Help: "Device worker processes started (policy.isolation process)."}, []string{"device"})
	m.workerExits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pkcs11ha", Name: "worker_exits_total",
		Help: "Device worker processes that ended, by how: killed for a hang or stuck calls, crashed, exited."}, []string{"device", "status"})
	m.attemptsC.get = func(l ...string) prometheus.Counter { return m.attempts.WithLabelValues(l...) }
	m.attemptLatencyC.get = func(l ...string) prometheus.Observer { return m.attemptLatency.WithLabelValues(l...) }
	m.operationsC.get = func(l ...string) prometheus.Counter { return m.operations.WithLabelValues(l...) }
	m.opLatencyC.get = func(l ...string) prometheus.Observer { return m.opLatency.WithLabelValues(l...) }
	// Every series dashboards and alerts read exists from the first scrape, so that rate() and absence
	// alerts work on a fresh process (device_state is set by Open, which knows each device's first state).
	m.retiredMax.Set(float64(s.own.MaxRetired))
	for _, op := range []string{"sign", "decrypt"} { // the operations Cluster.do reports (key.go)
		m.opLatency.WithLabelValues(op)
		m.failovers.WithLabelValues(op)
		m.spills.WithLabelValues(op)
		m.retries.WithLabelValues(op)
		m.hedges.WithLabelValues(op)
		for _, c := range []Class{ClassDeviceDown, ClassBusy} {
			m.operations.WithLabelValues(op, "none", c.String())
		}
		for _, d := range s.cfg.Devices {
			m.operations.WithLabelValues(op, d.Name, ClassNone.String())
			m.attempts.WithLabelValues(d.Name, op, ClassNone.String())
			m.attemptLatency.WithLabelValues(d.Name, op)
		}
	}
	for i, d := range s.cfg.Devices {
		m.breaker.WithLabelValues(d.Name).Set(0)
		m.abandoned.WithLabelValues(d.Name).Set(0)
		m.reinits.WithLabelValues(d.Name)
		m.info.WithLabelValues(d.Name, d.Region, strconv.Itoa(s.cfg.tierOf(i))).Set(1)
		m.retired.WithLabelValues(d.Name).Set(0)
		m.badSignatures.WithLabelValues(d.Name)
		m.workerStarts.WithLabelValues(d.Name)
	}
	if reg != nil {
		for _, c := range m.collectors() {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("pkcs11ha: registering metrics (one cluster per registry): %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.attempts, m.attemptLatency, m.operations, m.opLatency, m.breaker, m.state,
		m.failovers, m.spills, m.retries, m.hedges, m.abandoned, m.reinits, m.keyInconsistent, m.info, m.retired, m.retiredMax,
		m.stuck, m.badSignatures, m.workerStarts, m.workerExits}
}

// childCache keeps the per-label-set children of a metric vector: WithLabelValues hashes its labels on
// every call (~0.5 µs, four times per signature), a sync.Map hit is a tenth of that.
type childCache[V any] struct {
	m   sync.Map // [3]string -> V
	get func(labels ...string) V
}

func (c *childCache[V]) with(a, b, d string) V {
	k := [3]string{a, b, d}
	if v, ok := c.m.Load(k); ok {
		return v.(V)
	}
	var v V
	switch {
	case d != "":
		v = c.get(a, b, d)
	case b != "":
		v = c.get(a, b)
	default:
		v = c.get(a)
	}
	c.m.Store(k, v)
	return v
}

func (m *metrics) deviceState(device string, s health.State) {
	m.state.WithLabelValues(device).Set(float64(s))
}

// operation counts a call as its caller saw it; dev is "" when no device served it (the label says "none").
func (m *metrics) operation(op, dev string, res failover.Outcome, err error, d time.Duration) {
	if dev == "" {
		dev = "none"
	}
	m.operationsC.with(op, dev, errclass.OutcomeLabel(err, failover.ClassOf(err))).Inc()
	m.opLatencyC.with(op, "", "").Observe(d.Seconds())
	if res.Attempts > 1 {
		m.retries.WithLabelValues(op).Inc()
	}
}

// observer turns router events into metrics and log lines.
type observer struct{ cl *Cluster }

func (o *observer) name(i int) string { return o.cl.s.cfg.Devices[i].Name }

func (o *observer) AttemptDone(member int, op string, class failover.Class, err error, latency time.Duration, hedge bool) {
	dev := o.name(member)
	o.cl.metrics.attemptsC.with(dev, op, errclass.OutcomeLabel(err, class)).Inc()
	o.cl.metrics.attemptLatencyC.with(dev, op, "").Observe(latency.Seconds())
	if class == failover.ClassDown && member < len(o.cl.monitors) {
		// Timeouts and device errors: have the probe look now rather than in 5 s.
		o.cl.monitors[member].ProbeNow()
	}
}

func (o *observer) BreakerChanged(member int, from, to string) {
	v := map[string]float64{"closed": 0, "half-open": 1, "open": 2}[to]
	o.cl.metrics.breaker.WithLabelValues(o.name(member)).Set(v)
	lvl := slog.LevelInfo
	if to == "open" {
		lvl = slog.LevelWarn
	}
	o.cl.log.Log(context.Background(), lvl, "breaker changed", "device", o.name(member), "from", from, "to", to)
}

func (o *observer) Failover(op string, from, to int) {
	o.cl.metrics.failovers.WithLabelValues(op).Inc()
}

func (o *observer) Spill(op string, to int) { o.cl.metrics.spills.WithLabelValues(op).Inc() }

func (o *observer) Hedged(op string, primary, backup int) {
	o.cl.metrics.hedges.WithLabelValues(op).Inc()
}

func (o *observer) Abandoned(member int, perMember, total int) {
	o.cl.metrics.abandoned.WithLabelValues(o.name(member)).Set(float64(perMember))
}

func (m *metrics) WorkerStart(device string) { m.workerStarts.WithLabelValues(device).Inc() }

func (m *metrics) WorkerExit(device, status string) {
	m.workerExits.WithLabelValues(device, status).Inc()
}
