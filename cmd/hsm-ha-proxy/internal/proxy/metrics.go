package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/promreg"
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
		m.requests = promreg.Register(reg, m.requests)
		m.duration = promreg.Register(reg, m.duration)
		m.inFlight = promreg.Register(reg, m.inFlight)
		m.outcomes = promreg.Register(reg, m.outcomes)
		m.reloads = promreg.Register(reg, m.reloads)
	}
	return m
}
