package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

const usage = `usage:
  hsm-ha-proxy serve --config FILE [--log-level debug|info|warn|error] [--log-format json|text] [--metrics-addr HOST:PORT]
  hsm-ha-proxy status [--socket PATH | --addr https://HOST:PORT --cert FILE --key FILE --ca FILE] [--json | --ready | --live]
  hsm-ha-proxy check --config FILE [--json] [--replicas N]
  hsm-ha-proxy keys list|generate|import|destroy|sync|init-kek --config FILE --partition P ... (hsm-ha-proxy keys help)
`

func main() {
	// A device worker (policy.isolation process, the default) is this binary re-executed: it serves its
	// parent and exits here, before any flag is parsed.
	pkcs11ha.MaybeRunWorker()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "check":
		return runCheck(args[1:], stdout, stderr)
	case "keys":
		return runKeys(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "hsm-ha-proxy: unknown command %q\n%s", args[0], usage)
	return 2
}

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

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Listen before opening the HSMs: a second sidecar on the same socket fails before touching them.
	ln, err := proxy.Listen(cfg.Server)
	if err != nil {
		logger.Error("listening", "listen", cfg.Server.Listen, "err", err)
		return 1
	}
	var mln net.Listener
	if *metricsAddr != "" {
		if mln, err = net.Listen("tcp", *metricsAddr); err != nil {
			ln.Close()
			logger.Error("listening for metrics", "metrics_addr", *metricsAddr, "err", err)
			return 1
		}
		defer mln.Close()
	}
	p11, err := openPKCS11(cfg.Server)
	if err != nil {
		ln.Close()
		logger.Error("listening", "pkcs11", cfg.Server.PKCS11, "err", err)
		return 1
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cl, err := pkcs11ha.Open(ctx, cfg.Library(), pkcs11ha.WithLogger(logger), pkcs11ha.WithRegisterer(reg))
	if err != nil {
		ln.Close()
		p11.close()
		if ctx.Err() != nil {
			logger.Info("stopped by a signal while opening the cluster")
			return 0
		}
		logger.Error("opening the cluster", "err", err)
		return 1
	}
	srv := proxy.New(cfg, cl, logger, reg)
	registerReady(reg, cl.Ready)
	if mln != nil {
		defer serveMetrics(mln, reg, logger)()
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				// From now on a second SIGTERM/SIGINT kills the process at once.
				stop()
				return
			case <-hup:
				reload(srv, cl, ln, *configPath, logger)
			}
		}
	}()

	logger.Info("hsm-ha-proxy started", "listen", ln.Addr().String(), "pkcs11", cfg.Server.PKCS11, "devices", len(cfg.Devices),
		"partitions", cfg.PartitionNames(), "clients", len(cfg.Clients))
	p11.start(ctx, cfg, cl, srv, logger, reg)
	serveErr := srv.Serve(ctx, ln)
	stop() // the HTTP server has stopped (or failed): stop the PKCS#11 door too
	if err := p11.wait(); err != nil && serveErr == nil {
		serveErr = err
	}
	closeCluster(cl, cl.Config().Policy.CloseTimeout.D(), logger)
	if serveErr != nil {
		logger.Error("serving", "err", serveErr)
		return 1
	}
	logger.Info("hsm-ha-proxy stopped")
	return 0
}

// reload re-reads the config file and replaces the clients: section and, on a tcp:// listener, the TLS
// certificate, key and client CA (the files named by server.tls, read again: rotated certificates are
// picked up), and reads the partitions' PINs again (a partition whose login failed tries a new PIN once).
// Everything else in the file is ignored until a restart.
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

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

// runStatus is `hsm-ha-proxy status`.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", proxy.SocketPath(proxy.DefaultListen), "unix socket of the sidecar")
	addr := fs.String("addr", "", "https://HOST:PORT of a sidecar listening with mutual TLS (instead of --socket)")
	certFile := fs.String("cert", "", "client certificate (with --addr)")
	keyFile := fs.String("key", "", "client key (with --addr)")
	caFile := fs.String("ca", "", "CA of the sidecar's certificate (with --addr)")
	asJSON := fs.Bool("json", false, "print the raw JSON of /v1/status")
	ready := fs.Bool("ready", false, "probe: exit 0 when /readyz says ready, 1 otherwise (prints nothing when ready)")
	live := fs.Bool("live", false, "probe: exit 0 when /healthz answers, 1 otherwise (prints nothing when live)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || btoi(*asJSON)+btoi(*ready)+btoi(*live) > 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var c *sidecarclient.Client
	if *addr != "" {
		tc, err := clientTLS(*certFile, *keyFile, *caFile)
		if err != nil {
			fmt.Fprintf(stderr, "hsm-ha-proxy status: %v\n", err)
			return 2
		}
		c = sidecarclient.DialTLS(*addr, tc)
	} else {
		c = sidecarclient.Dial(*socket)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *ready || *live {
		return probe(ctx, c, *live, stderr)
	}
	st, err := c.Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy status: %v\n", err)
		var ae *sidecarclient.APIError
		if errors.As(err, &ae) && ae.Code == sidecarapi.CodeUnauthenticated {
			fmt.Fprintln(stderr, "hint: add your uid (or certificate name) to the clients: section of the sidecar's config")
		}
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return 1
		}
		return 0
	}
	printStatus(stdout, st)
	return 0
}

// probe is `status --ready` and `status --live`, for exec probes (a kubelet cannot send HTTP over a unix
// socket): the exit code is the answer. Nothing is printed when the answer is yes; otherwise one line on
// stderr says why, which `kubectl describe pod` shows in the probe's event.
func probe(ctx context.Context, c *sidecarclient.Client, live bool, stderr io.Writer) int {
	if live {
		if err := c.Live(ctx); err != nil {
			fmt.Fprintf(stderr, "hsm-ha-proxy status --live: %v\n", err)
			return 1
		}
		return 0
	}
	ok, err := c.Ready(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy status --ready: %v\n", err)
		return 1
	}
	if !ok {
		fmt.Fprintln(stderr, "hsm-ha-proxy status --ready: not ready (a partition has no up device holding all its keys, or the sidecar is shutting down)")
		return 1
	}
	return 0
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// printStatus writes the device table.
func printStatus(w io.Writer, st *sidecarapi.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tREGION\tTIER\tSTATE\tBREAKER\tEWMA\tIN-FLIGHT\tABANDONED\tREASON")
	for _, d := range st.Devices {
		reason := d.Reason
		if reason == "" && d.State != "up" {
			reason = d.LastError
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\t%s\n", d.Name, d.Region, d.Tier, d.State, d.Breaker,
			sidecarapi.FormatLatency(d.EWMA), d.InFlight, d.Abandoned, sidecarapi.OneLine(reason, 80))
	}
	_ = tw.Flush()
	ready := "yes"
	if !st.Ready {
		ready = "no (some partition has no up device holding all its keys)"
	}
	fmt.Fprintf(w, "ready: %s\n", ready)
}

// clientTLS builds the client side of mutual TLS for --addr.
func clientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("--addr needs --cert, --key and --ca")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, RootCAs: pool}, nil
}
