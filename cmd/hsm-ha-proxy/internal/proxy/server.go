package proxy

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/handover"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/servedkey"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

const (
	// MaxBodyBytes caps request bodies: larger ones are answered 413.
	MaxBodyBytes = 1 << 20
	// DefaultShutdownGrace is how long in-flight requests may run after a shutdown starts when
	// server.shutdown_grace is not set.
	DefaultShutdownGrace = 10 * time.Second
	// handlerDrain bounds the wait for handlers still running after the grace period forced connections
	// closed (their contexts are cancelled by then).
	handlerDrain = 5 * time.Second
)

// backend is what the server needs of a *pkcs11ha.Cluster (an interface so that the HTTP layer can be
// tested without HSMs).
type backend interface {
	Key(ctx context.Context, partition, label string) (keyHandle, error)
	Keys(partition string) ([]pkcs11ha.KeyInfo, error)
	SecretKey(ctx context.Context, partition, label string) (secretHandle, error)
	SecretKeys(partition string) ([]pkcs11ha.SecretKeyInfo, error)
	Status() []pkcs11ha.DeviceStatus
	Ready() bool
}

// keyHandle is what the server needs of a *pkcs11ha.Key: its operations, each naming the device that
// served it ("" when none did).
type keyHandle interface {
	Info() pkcs11ha.KeyInfo
	Public() crypto.PublicKey
	SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error)
	DecryptDevice(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, string, error)
}

// clusterBackend adapts *pkcs11ha.Cluster to backend.
type clusterBackend struct{ cl *pkcs11ha.Cluster }

func (b clusterBackend) Key(ctx context.Context, partition, label string) (keyHandle, error) {
	k, err := b.cl.Key(ctx, partition, label)
	if err != nil {
		return nil, err
	}
	return servedkey.Key{Key: k}, nil
}

func (b clusterBackend) Keys(partition string) ([]pkcs11ha.KeyInfo, error) {
	return b.cl.Keys(partition)
}
func (b clusterBackend) Status() []pkcs11ha.DeviceStatus { return b.cl.Status() }
func (b clusterBackend) Ready() bool                     { return b.cl.Ready() }

// Server is the sidecar's HTTP server. Create it with New, run it with Serve.
type Server struct {
	be         backend
	partitions map[string]bool
	partNames  []string
	log        *slog.Logger
	m          *httpMetrics
	auth       atomic.Pointer[authTable]
	handler    http.Handler
	reqTimeout time.Duration
	grace      time.Duration

	// Hot upgrade (handover.go): hl is Serve's listener, started closed once it is set; conns are the
	// unix connections; send is where HandOver passes them (nil until it is called).
	hl      *handoffListener
	started chan struct{}
	hmu     sync.Mutex
	conns   map[*hconn]struct{}
	send    handover.Sender
	passed  atomic.Int64

	serving  atomic.Bool
	draining atomic.Bool // Serve's context ended: shutting down
	forced   atomic.Bool // the grace period ran out: requests were cancelled
	inFlight atomic.Int64
}

// New returns a server of cluster cl with the request timeout, server and clients sections of cfg. The library's
// collectors are expected on reg (pkcs11ha.WithRegisterer); the server adds its HTTP metrics there and
// serves reg on /metrics. A nil logger discards, a nil reg gets a fresh registry.
func New(cfg *sidecarconfig.Config, cl *pkcs11ha.Cluster, logger *slog.Logger, reg *prometheus.Registry) *Server {
	return newServer(cfg, clusterBackend{cl: cl}, logger, reg)
}

func newServer(cfg *sidecarconfig.Config, be backend, logger *slog.Logger, reg *prometheus.Registry) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{
		be:         be,
		partitions: map[string]bool{},
		partNames:  cfg.PartitionNames(),
		log:        logger,
		m:          newHTTPMetrics(reg),
		reqTimeout: cfg.Policy.RequestDeadline(),
		grace:      cfg.Server.ShutdownGrace.D(),
		started:    make(chan struct{}),
		conns:      map[*hconn]struct{}{},
	}
	if s.grace <= 0 {
		s.grace = DefaultShutdownGrace
	}
	for _, p := range s.partNames {
		s.partitions[p] = true
	}
	t, err := newAuthTable(cfg.Clients, s.partNames)
	if err != nil {
		// sidecarconfig.Config.Validate has checked the same rules; a config built by hand may not have.
		logger.Error("clients: section rejected: every request will be refused (401)", "err", err)
		t = &authTable{}
	}
	s.auth.Store(t)
	s.handler = s.routes(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return s
}

// Handler returns the server's http.Handler (for embedding; Serve uses it). Unix peer credentials are
// only available to requests on connections accepted by Serve.
func (s *Server) Handler() http.Handler { return s.handler }

// ReloadClients replaces the client table (the clients: section) atomically; requests already authorised
// finish under the old one. On error the table is left unchanged.
func (s *Server) ReloadClients(clients []sidecarconfig.ClientConfig) error {
	t, err := newAuthTable(clients, s.partNames)
	if err != nil {
		s.m.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("proxy: reloading clients: %w", err)
	}
	s.auth.Store(t)
	s.m.reloads.WithLabelValues("ok").Inc()
	s.log.Info("clients reloaded", "clients", len(t.clients))
	return nil
}

// Serve accepts connections on ln until ctx ends, then shuts down gracefully: it stops accepting (closing
// ln, which removes a unix socket), lets in-flight requests finish within server.shutdown_grace, cancels
// those still running after that, and returns. It returns nil after a shutdown and an error when ln
// fails. It does not close the cluster: the caller does, after Serve returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("proxy: Serve called twice")
	}
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           s.handler,
		ConnContext:       connContext,
		ConnState:         s.connState,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelInfo),
	}
	s.hl = newHandoffListener(ln, s)
	close(s.started)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.hl) }()
	s.log.Info("serving", "addr", ln.Addr().String(), "request_timeout", s.reqTimeout.String())

	select {
	case err := <-errc:
		return fmt.Errorf("proxy: serve: %w", err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	s.log.Info("shutting down: stopped accepting, draining in-flight requests",
		"in_flight", s.inFlight.Load(), "grace", s.grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), s.grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.forced.Store(true)
		s.log.Warn("grace period over: cancelling the requests still in flight", "in_flight", s.inFlight.Load())
		cancelBase()
		_ = srv.Close()
		deadline := time.Now().Add(handlerDrain)
		for s.inFlight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	<-errc // http.ErrServerClosed
	s.log.Info("stopped serving")
	return nil
}

// reqInfo is what the access log and the metrics record about one request; handlers fill it in.
type reqInfo struct {
	client    string
	peer      string
	partition string
	key       string
	op        string
	alg       string
	device    string
	code      string // API error code; "" for success
	errMsg    string // detail of a 5xx, for the log
	admin     bool   // the client is granted admin: true
}

type reqInfoKey struct{}

func reqInfoFrom(ctx context.Context) *reqInfo {
	if ri, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{}
}

// statusWriter records the status code written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe wraps the router: in-flight accounting, HTTP metrics and the access log.
func (s *Server) observe(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.inFlight.Add(1)
		s.m.inFlight.Inc()
		defer func() {
			s.m.inFlight.Dec()
			s.inFlight.Add(-1)
		}()
		ri := &reqInfo{}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri))
		sw := &statusWriter{ResponseWriter: w}
		mux.ServeHTTP(sw, r) // sets r.Pattern
		lat := time.Since(start)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		if ri.code == codeCanceled {
			status = statusClientClosed
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		s.m.requests.WithLabelValues(route, methodLabel(r.Method), strconv.Itoa(status)).Inc()
		s.m.duration.WithLabelValues(route).Observe(lat.Seconds())
		outcome := "ok"
		if ri.code != "" {
			outcome = ri.code
		}
		level := slog.LevelDebug // probes and scrapes
		if ri.op != "" {
			level = slog.LevelInfo
			s.m.outcomes.WithLabelValues(ri.op, outcome).Inc()
		}
		if !s.log.Enabled(r.Context(), level) {
			return
		}
		attrs := []slog.Attr{
			slog.String("client", ri.client),
			slog.String("peer", ri.peer),
			slog.String("partition", ri.partition),
			slog.String("key", ri.key),
			slog.String("operation", ri.op),
			slog.String("algorithm", ri.alg),
			slog.String("device", ri.device),
			slog.String("outcome", outcome),
			slog.Int("status", status),
			slog.Float64("latency_ms", float64(lat.Microseconds())/1000),
			slog.String("method", r.Method),
			slog.String("route", route),
		}
		if ri.errMsg != "" {
			attrs = append(attrs, slog.String("error", ri.errMsg))
		}
		s.log.LogAttrs(context.Background(), level, "access", attrs...)
	})
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions:
		return m
	}
	return "other"
}
