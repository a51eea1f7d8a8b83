package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

const checkUsage = `usage: hsm-ha-proxy check --config FILE [--json] [--replicas N]

Connects to every device of the config the way serve does (same config, same PIN sources, one C_Login per
device and partition), does nothing else, and reports per device, per key and per token, with advice from
the deployment guidance (an HA pair per region, a DR pair in a second region, the HSMs nearest the apps).
Exit status: 0 everything reachable and consistent (advice may still be printed), 1 problems (unreachable
device, failed login, key different or missing, session budget exceeded), 2 config or usage error.

`

// checkResult is what check prints; --json prints exactly this. The field names are stable
// (docs/operations.md, "Preflight").
type checkResult struct {
	Config   string             `json:"config"`
	Verdict  string             `json:"verdict"` // "ok" or "problems"
	ExitCode int                `json:"exit_code"`
	Problems []finding          `json:"problems"`
	Advice   []finding          `json:"advice"`
	Budget   sessionBudget      `json:"session_budget"`
	Report   *inspection.Report `json:"report"`
}

// runCheck is `hsm-ha-proxy check`.
func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, checkUsage)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", "", "config file (the one serve reads)")
	asJSON := fs.Bool("json", false, "print the result as JSON (stable field names) instead of the report")
	replicas := fs.Int("replicas", 1, "sidecar replicas (processes) that will share each token, for the session budget")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case *configPath == "" || fs.NArg() > 0:
		fmt.Fprint(stderr, "hsm-ha-proxy check: --config FILE is required (and nothing else)\n\n", checkUsage)
		return 2
	case *replicas < 1:
		fmt.Fprintln(stderr, "hsm-ha-proxy check: --replicas must be at least 1")
		return 2
	}
	cfg, err := sidecarconfig.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy check: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rep, err := pkcs11ha.Inspect(ctx, cfg.Library(), inspection.Options{})
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy check: %v\n", err)
		var ce *pkcs11ha.ConfigError
		if errors.As(err, &ce) {
			return 2
		}
		return 1
	}
	res := judge(*configPath, rep, *replicas)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "hsm-ha-proxy check: %v\n", err)
			return 1
		}
	} else {
		printCheck(stdout, res)
	}
	return res.ExitCode
}

// judge derives the budget, problems, advice and exit code from an inspection.
func judge(configPath string, rep *inspection.Report, replicas int) *checkResult {
	b := budget(rep, replicas)
	res := &checkResult{Config: configPath, Verdict: "ok", Problems: problems(rep, b), Advice: advice(rep, b), Budget: b, Report: rep}
	if len(res.Problems) > 0 {
		res.Verdict, res.ExitCode = "problems", 1
	}
	return res
}
