package p11front

import (
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/promreg"
)

// metrics are the front end's collectors, on the sidecar's registry next to the library's and the HTTP
// API's. Label values are bounded: client names come from the config, calls and mechanisms from fixed
// tables ("unknown", "other"), results are CKR names.
type metrics struct {
	calls          *prometheus.CounterVec   // client, call, result
	operations     *prometheus.CounterVec   // client, partition, operation, mechanism, result
	opDuration     *prometheus.HistogramVec // partition, operation, mechanism
	connections    prometheus.Gauge
	sessions       prometheus.Gauge
	protocolErrors *prometheus.CounterVec // kind

	callCache sync.Map // callKey -> prometheus.Counter
	opCache   sync.Map // opKey -> opChildren
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "hsm_ha_proxy", "pkcs11"
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "calls_total",
			Help: "PKCS#11 calls served by the front end, by client, call and result (CKR name)."},
			[]string{"client", "call", "result"}),
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "operations_total",
			Help: "Signatures and decryptions through the cluster, by client, partition, operation, mechanism and result."},
			[]string{"client", "partition", "operation", "mechanism", "result"}),
		opDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "operation_duration_seconds",
			Help:    "Latency of signatures and decryptions through the cluster.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}},
			[]string{"partition", "operation", "mechanism"}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connections",
			Help: "Open connections to the PKCS#11 front end."}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions",
			Help: "Open PKCS#11 sessions over every connection."}),
		protocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "protocol_errors_total",
			Help: "Malformed input from clients, by kind (frame, truncated, oversize, message, arguments, unknown_call)."},
			[]string{"kind"}),
	}
	if reg != nil {
		m.calls = promreg.Register(reg, m.calls)
		m.operations = promreg.Register(reg, m.operations)
		m.opDuration = promreg.Register(reg, m.opDuration)
		m.connections = promreg.Register(reg, m.connections)
		m.sessions = promreg.Register(reg, m.sessions)
		m.protocolErrors = promreg.Register(reg, m.protocolErrors)
	}
	return m
}

// call counts one call.
func (m *metrics) call(client string, call p11rpc.CallID, result rv) {
	k := callKey{client, call, result}
	if c, ok := m.callCache.Load(k); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	c := m.calls.WithLabelValues(client, callName(call), rvName(result))
	m.callCache.Store(k, c)
	c.Inc()
}

// callKey and opKey name the children of calls and of operations/opDuration in the caches: a child found by
// its label values hashes every value each time, which a signature paid five times.
type callKey struct {
	client string
	call   p11rpc.CallID
	result rv
}

type opKey struct {
	client, partition, op, mech string
	result                      rv
}

// opChildren are the collectors of one (client, partition, operation, mechanism, result).
type opChildren struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

func (m *metrics) operation(k opKey) opChildren {
	if c, ok := m.opCache.Load(k); ok {
		return c.(opChildren)
	}
	c := opChildren{
		count:    m.operations.WithLabelValues(k.client, k.partition, k.op, k.mech, rvName(k.result)),
		duration: m.opDuration.WithLabelValues(k.partition, k.op, k.mech),
	}
	m.opCache.Store(k, c)
	return c
}

// access records one signature or decryption through the cluster: the metrics and the access log line
// (client, peer, partition, key, mechanism, device, result, latency — never a payload or a PIN).
func (c *conn) access(op string, s *session, o *object, mechName, device string, code rv, err error, lat time.Duration) {
	client := c.clientName()
	m := c.s.m.operation(opKey{client, s.partition, op, mechName, code})
	m.count.Inc()
	m.duration.Observe(lat.Seconds())
	// The handler directly, with no caller PC: Logger.LogAttrs would unwind the stack for a source
	// location the access log does not print.
	h := c.s.log.Handler()
	if !h.Enabled(c.s.base, slog.LevelInfo) {
		return
	}
	if device == "" || device == "none" {
		device = "-"
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "access", 0)
	r.AddAttrs(
		slog.String("door", "pkcs11"),
		slog.String("client", client),
		slog.Int("uid", c.cred.UID),
		slog.Int("pid", c.cred.PID),
		slog.String("partition", s.partition),
		slog.String("key", o.label),
		slog.String("operation", op),
		slog.String("mechanism", mechName),
		slog.String("device", device),
		slog.String("result", rvName(code)),
		slog.Float64("latency_ms", float64(lat.Microseconds())/1000),
	)
	if err != nil {
		r.AddAttrs(slog.String("error", err.Error()))
	}
	_ = h.Handle(c.s.base, r)
}
