package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// stopCPUProfile ends the CPU profile of a binary built with -tags cpuprofile (cpuprofile.go); a no-op
// otherwise.
var stopCPUProfile = func() {}

// runServe is `hsm-ha-proxy serve`.
func runServe(args []string, stderr io.Writer) int {
	defer stopCPUProfile()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config file (the library's YAML plus server: and clients:)")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	format := fs.String("log-format", "json", "log format: json or text")
	metricsAddr := fs.String("metrics-addr", "", "also serve /metrics over plain HTTP on HOST:PORT (for Prometheus, which cannot scrape a unix socket)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" || fs.NArg() > 0 {
		fmt.Fprint(stderr, "hsm-ha-proxy serve: --config FILE is required (and nothing else)\n", usage)
		return 2
	}
	logger, err := newLogger(stderr, *level, *format)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy serve: %v\n", err)
		return 2
	}
	cfg, err := sidecarconfig.Load(*configPath)
	if err != nil {
		logger.Error("loading the config", "path", *configPath, "err", err)
		return 1
	}
	pinExecutable(logger)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	up, err := newUpgrader(cfg.Server, logger)
	if err != nil {
		logger.Error("starting", "err", err)
		return 1
	}
	s, code := openSidecar(ctx, cfg, *configPath, *metricsAddr, up, logger)
	if s == nil {
		up.abandon()
		return code
	}
	return s.run(ctx, stop)
}

// sidecar is one serving process of `hsm-ha-proxy serve`: its listeners (inherited from the previous
// process of a hot upgrade, or bound), its cluster and its two doors.
type sidecar struct {
	cfg  *sidecarconfig.Config
	path string // the config file, read again on SIGHUP
	log  *slog.Logger
	up   *upgrader
	ln   net.Listener // the HTTP API's
	mln  net.Listener // --metrics-addr's, or nil
	p11  *pkcs11Door  // nil when server.pkcs11 is empty
	kms  *kmsDoor     // nil when server.kms is empty
	cl   *pkcs11ha.Cluster
	srv  *proxy.Server
	reg  *prometheus.Registry
}

// openSidecar listens (before opening the HSMs: a second sidecar on the same socket fails before touching
// them) and opens the cluster. On failure it releases what it took and returns the exit code.
func openSidecar(ctx context.Context, cfg *sidecarconfig.Config, path, metricsAddr string, up *upgrader,
	logger *slog.Logger) (*sidecar, int) {
	s := &sidecar{cfg: cfg, path: path, log: logger, up: up}
	network, addr := proxy.ListenAddr(cfg.Server)
	ln, err := up.listen(network, addr, func(inh net.Listener) (net.Listener, error) { return proxy.ListenInherited(cfg.Server, inh) })
	if err != nil {
		logger.Error("listening", "listen", cfg.Server.Listen, "err", err)
		return nil, 1
	}
	s.ln = ln
	if metricsAddr != "" {
		listenTCP := func(inh net.Listener) (net.Listener, error) {
			if inh != nil {
				return inh, nil
			}
			return net.Listen("tcp", metricsAddr)
		}
		if s.mln, err = up.listen("tcp", metricsAddr, listenTCP); err != nil {
			s.closeListeners()
			logger.Error("listening for metrics", "metrics_addr", metricsAddr, "err", err)
			return nil, 1
		}
	}
	if s.p11, err = openPKCS11(cfg.Server, up); err != nil {
		s.closeListeners()
		logger.Error("listening", "pkcs11", cfg.Server.PKCS11, "err", err)
		return nil, 1
	}
	if s.kms, err = openKMS(cfg, up); err != nil {
		s.closeListeners()
		logger.Error("listening", "kms", cfg.Server.KMS, "err", err)
		return nil, 1
	}
	s.reg = prometheus.NewRegistry()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.cl, err = pkcs11ha.Open(ctx, cfg.Library(), pkcs11ha.WithLogger(logger), pkcs11ha.WithRegisterer(s.reg))
	if err != nil {
		s.closeListeners()
		if ctx.Err() != nil {
			logger.Info("stopped by a signal while opening the cluster")
			return nil, 0
		}
		logger.Error("opening the cluster", "err", err)
		return nil, 1
	}
	s.srv = proxy.New(cfg, s.cl, logger, s.reg)
	registerReady(s.reg, s.cl.Ready)
	return s, 0
}

// closeListeners releases the listeners of a process that will not serve. The new process of a hot
// upgrade leaves the socket files alone: the old process is still serving on them.
func (s *sidecar) closeListeners() {
	for _, ln := range []net.Listener{s.ln, s.mln} {
		if ln != nil {
			if s.up.hasParent() {
				unixsock.KeepSocket(ln)
			}
			ln.Close()
		}
	}
	s.p11.close(s.up.hasParent())
	s.kms.close(s.up.hasParent())
}

// run serves until SIGTERM/SIGINT or a hot upgrade hands everything over, then shuts down.
func (s *sidecar) run(ctx context.Context, stop context.CancelFunc) int {
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(ctx, s.ln) }()
	if s.mln != nil {
		defer serveMetrics(s.mln, s.reg, s.log)()
	}
	// The PKCS#11 door serves at once, or, when an old process hands its connections over, once its
	// object handles are in (receive).
	if !s.up.inheritsPKCS11() {
		s.p11.start(ctx, s.cfg, s.cl, s.srv, s.log, s.reg, nil)
	}
	s.kms.start(ctx, s.cl, s.log)
	if err := s.up.ready(ctx, s.cl); err != nil {
		s.log.Error("not serving", "err", err)
		stop()
	} else {
		go s.up.receive(ctx, s)
		s.log.Info("hsm-ha-proxy started", "listen", s.ln.Addr().String(), "pkcs11", s.cfg.Server.PKCS11,
			"devices", len(s.cfg.Devices), "partitions", s.cfg.PartitionNames(), "clients", len(s.cfg.Clients),
			"pid", os.Getpid(), "upgraded", s.up.hasParent())
	}
	go s.signals(ctx, stop)

	serveErr := <-served
	stop() // the HTTP server has stopped (or failed): stop the other doors too
	if err := s.p11.wait(); err != nil && serveErr == nil {
		serveErr = err
	}
	if err := s.kms.wait(); err != nil && serveErr == nil {
		serveErr = err
	}
	closeCluster(s.cl, s.cl.Config().Policy.CloseTimeout.D(), s.log)
	s.up.finish()
	if serveErr != nil {
		s.log.Error("serving", "err", serveErr)
		return 1
	}
	s.log.Info("hsm-ha-proxy stopped", "handed_over", s.up.handedOver())
	return 0
}

// signals runs SIGHUP (reload) and SIGUSR2 (hot upgrade) until ctx ends.
func (s *sidecar) signals(ctx context.Context, stop context.CancelFunc) {
	hup := make(chan os.Signal, 1)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(hup)
	defer signal.Stop(usr2)
	for {
		select {
		case <-ctx.Done():
			// From now on a second SIGTERM/SIGINT kills the process at once.
			stop()
			return
		case <-hup:
			reload(s.srv, s.cl, s.ln, s.path, s.log)
		case <-usr2:
			go s.upgrade(ctx, stop)
		}
	}
}

// reload re-reads the config file and replaces the clients: section and, on a tcp:// listener, the TLS
// certificate, key and client CA (the files named by server.tls, read again: rotated certificates are
// picked up), and reads the partitions' PINs again (a partition whose login failed tries a new PIN once).
// Everything else in the file is ignored until a restart or a hot upgrade (docs/upgrades.md).
func reload(srv *proxy.Server, cl *pkcs11ha.Cluster, ln net.Listener, path string, logger *slog.Logger) {
	cfg, err := sidecarconfig.Load(path)
	if err != nil {
		logger.Error("SIGHUP: config not reloaded; keeping the current clients and certificates", "path", path, "err", err)
		return
	}
	if cl != nil {
		if n, err := cl.ReloadPINs(cfg.Library()); err != nil {
			logger.Error("SIGHUP: PINs not all reloaded", "err", err)
		} else if n > 0 {
			logger.Info("SIGHUP: new PINs; partitions that refused the old one log in once with the new one", "retries", n)
		}
	}
	if err := srv.ReloadClients(cfg.Clients); err != nil {
		logger.Error("SIGHUP: clients not reloaded; keeping the current clients", "err", err)
	}
	if ln.Addr().Network() == "unix" {
		return // protected by its mode and peer credentials: no certificates
	}
	if err := proxy.ReloadTLS(ln, cfg.Server.TLS); err != nil {
		logger.Error("SIGHUP: TLS not reloaded; keeping the current certificates", "err", err)
		return
	}
	logger.Info("SIGHUP: TLS certificates reloaded", "cert", cfg.Server.TLS.Cert, "client_ca", cfg.Server.TLS.ClientCA)
}

// closeCluster closes the cluster, waiting at most a little longer than the library's own bound.
func closeCluster(cl *pkcs11ha.Cluster, timeout time.Duration, logger *slog.Logger) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cl.Close()
	}()
	select {
	case <-done:
	case <-time.After(timeout + time.Second):
		logger.Warn("closing the cluster timed out; exiting anyway", "timeout", timeout.String())
	}
}
