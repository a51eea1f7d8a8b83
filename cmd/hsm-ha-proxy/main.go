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
	"os"
	"text/tabwriter"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
)

const usage = `usage:
  hsm-ha-proxy serve --config FILE [--log-level debug|info|warn|error] [--log-format json|text] [--metrics-addr HOST:PORT]
  hsm-ha-proxy status [--socket PATH | --addr https://HOST:PORT --cert FILE --key FILE --ca FILE] [--json | --ready | --live]
  hsm-ha-proxy check --config FILE [--json] [--replicas N]
  hsm-ha-proxy upgrade --pid-file FILE [--timeout 2m]
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
	case "upgrade":
		return runUpgrade(args[1:], stdout, stderr)
	case "keys":
		return runKeys(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "hsm-ha-proxy: unknown command %q\n%s", args[0], usage)
	return 2
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
		if l := d.Lanes; l != nil && l.Open < l.Total { // lane 0 serves meanwhile: worth a note, not a state
			note := fmt.Sprintf("%d of %d lanes open", l.Open, l.Total)
			if reason != "" {
				note = reason + "; " + note
			}
			reason = note
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
