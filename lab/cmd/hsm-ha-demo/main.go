package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

const usage = `usage: hsm-ha-demo [--duration D] [--no-failover] [--workers N] [--rate R] [--step D] [--dr-delay D]
                   [--report DIR] [--plain] [--keep] [--proxy-bin PATH] [--policy YAML]

Runs four SoftHSM2 devices in two regions (eastus local pair, westus DR pair behind a relay with a
one-way delay) and the real sidecar ("hsm-ha-proxy serve", found beside this program, else on PATH, or
given with --proxy-bin) on unix sockets in a temporary directory (its HTTP API and its PKCS#11 front end;
the header prints curl and pkcs11-tool commands to try), signs and verifies in the background,
shows the device table every second and, unless --no-failover, kills eastus-1, hangs eastus-2, lets DR
take over and brings both back. Ctrl-C stops everything and removes the temporary directory.

At the end, and after a Ctrl-C once the load has started, it draws the run into --report DIR (default:
the current directory) as failover-timeline.svg and failover-timeline.png: every call's latency coloured
by the device that served it, the calls per second per device, a line at every scripted step and the
time the local region was out shaded. The exit code is 1 if any operation failed.

`

// proxyName is the sidecar's executable, looked for beside the demo's own.
const proxyName = "hsm-ha-proxy"

// demoOptions are the demo's flags.
type demoOptions struct {
	duration   time.Duration // 0: until Ctrl-C
	noFailover bool
	workers    int
	rate       float64       // total signatures per second; 0: as fast as the workers go
	step       time.Duration // time between the scripted steps
	drDelay    time.Duration // one-way delay of the westus relay
	plain      bool          // plain lines even on a terminal
	keep       bool          // keep the temporary directory (logs, config, keys)
	report     string        // where the pictures go (absolute); "": none
	proxyBin   string        // the hsm-ha-proxy executable; "": beside this program, else on PATH
	policy     string        // extra policy keys for the sidecar's config (YAML lines)
}

func main() {
	os.Exit(demoMain(os.Args[1:], os.Stdout, os.Stderr))
}

// demoMain parses the flags, runs the demo until its end or a signal, and returns the exit code.
func demoMain(args []string, stdout, stderr io.Writer) int {
	o, code := parseFlags(args, stderr)
	if code >= 0 {
		return code
	}
	scr := newScreen(stdout, !o.plain && isTerminal(stdout) && os.Getenv("TERM") != "dumb")
	d := &demo{opts: o, scr: scr, stderr: stderr, forced: make(chan struct{})}

	// The first Ctrl-C (or SIGTERM, SIGHUP) stops the demo in order; a second one stops it at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for sig := range sigs {
			n++
			if n == 1 {
				d.interrupted.Store(sig.String())
				cancel()
				continue
			}
			if n == 2 {
				close(d.forced)
			}
		}
	}()

	code = d.run(ctx)
	if c := d.cleanup(); c > code {
		code = c
	}
	return code
}

// parseFlags returns the options, and an exit code >= 0 when the demo must not run (help, bad flags).
func parseFlags(args []string, stderr io.Writer) (demoOptions, int) {
	fs := flag.NewFlagSet("hsm-ha-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var o demoOptions
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (counted from the start of the load); 0 runs until Ctrl-C")
	fs.BoolVar(&o.noFailover, "no-failover", false, "no scripted failover: just the load and the table")
	fs.IntVar(&o.workers, "workers", 8, "concurrent signers of the background load")
	fs.Float64Var(&o.rate, "rate", 200, "signatures per second of the background load, all workers together (0: as fast as they go)")
	fs.DurationVar(&o.step, "step", 5*time.Second, "time between the scripted steps (kill at 1 step, pause at 2, restore at 3)")
	fs.DurationVar(&o.drDelay, "dr-delay", 20*time.Millisecond, "one-way delay of the DR (westus) devices' relay")
	fs.BoolVar(&o.plain, "plain", false, "print the table as plain lines even on a terminal")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (sidecar and device logs, config) instead of removing it")
	fs.StringVar(&o.report, "report", ".", "directory for the pictures of the run, "+pictureBase+".svg and .png (\"\": none)")
	fs.StringVar(&o.policy, "policy", "", "extra policy keys for the sidecar, as YAML lines (e.g. \"attempt_timeout: {local: 1s}\" on a host too loaded for the default deadlines)")
	fs.StringVar(&o.proxyBin, "proxy-bin", "", "the hsm-ha-proxy executable to run as the sidecar (default: the one beside this program, else on PATH)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, 0
		}
		return o, 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "hsm-ha-demo: unexpected argument %q\n", fs.Arg(0))
		return o, 2
	case o.workers < 1:
		fmt.Fprintln(stderr, "hsm-ha-demo: --workers must be at least 1")
		return o, 2
	case o.rate < 0 || o.duration < 0 || o.step <= 0 || o.drDelay < 0:
		fmt.Fprintln(stderr, "hsm-ha-demo: --rate, --duration and --dr-delay must not be negative, --step must be positive")
		return o, 2
	}
	if o.report != "" {
		abs, err := filepath.Abs(o.report) // the printed paths then work from anywhere
		if err != nil {
			fmt.Fprintf(stderr, "hsm-ha-demo: --report: %v\n", err)
			return o, 2
		}
		o.report = abs
	}
	return o, -1
}

// findProxy returns the sidecar executable: --proxy-bin if given, else hsm-ha-proxy in the directory of
// this program (where `make run` builds both), else on PATH.
func findProxy(flagValue string) (string, error) {
	if flagValue != "" {
		if !isExecutable(flagValue) {
			return "", fmt.Errorf("--proxy-bin %s is not an executable file", flagValue)
		}
		return filepath.Abs(flagValue)
	}
	if self, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(self); err == nil {
			self = resolved
		}
		if p := filepath.Join(filepath.Dir(self), proxyName); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath(proxyName); err == nil {
		return filepath.Abs(p)
	}
	return "", fmt.Errorf("cannot find %s beside this program nor on PATH: build it next to hsm-ha-demo "+
		"(`make run` does both) or pass --proxy-bin PATH", proxyName)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
