package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// registerReady exposes hsm_ha_proxy_ready: 1 while every partition has an up device holding all its keys
// (what /readyz answers), read at each scrape, so that an alert can say the sidecar is not ready.
func registerReady(reg prometheus.Registerer, ready func() bool) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "hsm_ha_proxy", Name: "ready",
		Help: "1 when every partition has an up device holding all its keys (as /readyz), else 0."},
		func() float64 {
			if ready() {
				return 1
			}
			return 0
		}))
}

// serveMetrics serves reg on GET /metrics over plain HTTP on ln (serve --metrics-addr): Prometheus cannot
// scrape a unix socket, and the API's own listener must not be opened to the network for it. Nothing but
// /metrics is served there. The returned function stops the server.
func serveMetrics(ln net.Listener, reg *prometheus.Registry, logger *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("serving metrics", "addr", ln.Addr().String(), "err", err)
		}
	}()
	logger.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
	}
}
