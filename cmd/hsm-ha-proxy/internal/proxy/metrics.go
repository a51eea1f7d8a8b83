package proxy

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics are the sidecar's own collectors, next to the library's.
type httpMetrics struct {
	requests *prometheus.CounterVec   // route, method, code
	duration *prometheus.HistogramVec // route
	inFlight prometheus.Gauge
	outcomes *prometheus.CounterVec // operation, outcome (API error code or "ok")
	reloads  *prometheus.CounterVec // result
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "hsm_ha_proxy", Name: "http_requests_total",
			Help: "HTTP requests by route pattern, method and status code."}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "hsm_ha_proxy", Name: "http_request_duration_seconds",
			Help:    "HTTP request latency by route pattern.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "hsm_ha_proxy", Name: "http_in_flight_requests",
			Help: "HTTP requests being served."}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "hsm_ha_proxy", Name: "api_outcomes_total",
			Help: "API operations by operation and outcome (\"ok\" or the API error code)."}, []string{"operation", "outcome"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "hsm_ha_proxy", Name: "client_reloads_total",
			Help: "Reloads of the clients: section by result."}, []string{"result"}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.duration = register(reg, m.duration)
		m.inFlight = register(reg, m.inFlight)
		m.outcomes = register(reg, m.outcomes)
		m.reloads = register(reg, m.reloads)
	}
	return m
}

// register registers c on reg, or returns the collector already registered under the same description
// (several servers on one registry share their collectors).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if ex, ok := are.ExistingCollector.(T); ok {
			return ex
		}
	}
	panic(fmt.Sprintf("proxy: registering metrics: %v", err)) // conflicting definitions: a programming error
}
