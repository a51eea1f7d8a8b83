// Command hsm-bench is `make bench`: in one run on one machine, what the pkcs11-ha layer costs and what
// it buys, against direct miekg/pkcs11 calls (the limit) and crypto11 (the peer). See package
// lab/bench for what is measured and how. The table goes to stdout, its last line being
//
//	BENCH ha_vs_direct=<ratio> ha_vs_crypto11=<ratio> frontend_vs_p11kit=<ratio>
//
// (ECDSA P-256, 8 goroutines, one device; the PKCS#11 front end against a stock p11-kit server); progress
// goes to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/pkcs11-ha/pkcs11-ha/lab/bench"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

func main() {
	pkcs11ha.MaybeRunWorker() // the device workers of the "worker" contender are this binary
	if os.Getenv(bench.ChildEnv) != "" {
		if err := bench.RunChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var o bench.Options
	var sections, gors, contenders, algs, slowModes, skip string
	flag.IntVar(&o.Rounds, "rounds", 0, "in-process slices per cell and contender, taken in turn (default 6)")
	flag.DurationVar(&o.Cell, "cell", 0, "measured time per cell and contender (default 3s)")
	flag.DurationVar(&o.Warmup, "warmup", 0, "warm-up per cell (default 300ms)")
	flag.IntVar(&o.P11Rounds, "p11-rounds", 0, "p11-kit slow-device runs per pattern and hedge setting (default 3; steady: 1)")
	flag.IntVar(&o.LossTrials, "loss-trials", 0, "region-loss trials per mode (default 2)")
	flag.StringVar(&sections, "sections", "", "comma-separated subset of routing,inproc,p11kit,frontend,upgrade (default all)")
	flag.IntVar(&o.Upgrades, "upgrades", 0, "hot upgrades of the sidecar under load in the upgrade section (default 5)")
	flag.StringVar(&gors, "goroutines", "", "in-process concurrencies, comma-separated (default 1,8)")
	flag.StringVar(&algs, "algs", "", `in-process algorithms, comma-separated: "ECDSA P-256", "RSA-2048", "AES-256-GCM seal", "AES-256-GCM open", "HMAC-SHA256" (default all)`)
	flag.StringVar(&contenders, "contenders", "", "in-process contenders, semicolon-separated labels (they hold commas), e.g. \"direct miekg/pkcs11;pkcs11ha, 1 device\" (default the four and the verify row of each algorithm)")
	flag.StringVar(&slowModes, "slow-modes", "", "slow-device patterns, comma-separated: onset,steady,spells,flicker (default all)")
	flag.StringVar(&skip, "skip", "", "p11-kit parts to skip, comma-separated: healthy,loss")
	flag.StringVar(&o.ProfileDir, "cpuprofile-dir", "", "write a CPU profile of every child (and of the front end's sidecar) here")
	flag.StringVar(&o.Sidecar, "sidecar", "", "front end: the hsm-ha-proxy binary to run (default: go build ./cmd/hsm-ha-proxy)")
	flag.StringVar(&o.PlotDir, "plots", "bench-plots", `pictures of the region loss and the slow device with and without hedging go here ("": none)`)
	flag.BoolVar(&o.Verbose, "v", false, "show every in-process slice in the progress output")
	flag.StringVar(&o.Dir, "dir", "", "working directory (default a temporary one, removed at the end)")
	flag.Parse()
	split := func(s, sep string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, sep)
	}
	o.Sections, o.Contenders, o.Algs = split(sections, ","), split(contenders, ";"), split(algs, ",")
	o.SlowModes, o.SkipP11 = split(slowModes, ","), split(skip, ",")
	for _, g := range split(gors, ",") {
		n, err := strconv.Atoi(g)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "hsm-bench: bad -goroutines %q\n", gors)
			os.Exit(2)
		}
		o.Goroutines = append(o.Goroutines, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "hsm-bench:", err)
		os.Exit(1)
	}
}
