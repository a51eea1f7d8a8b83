package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// `hsm-ha-proxy keys`: key management on every device of a partition (docs/keys.md). Each run opens
// its own cluster on the config (no background sync of its own), does one thing and exits: 0 done,
// 1 refused or drift found, 2 usage or config error.

const keysUsage = `usage:
  hsm-ha-proxy keys list     --config FILE --partition P [--json]
  hsm-ha-proxy keys generate --config FILE --partition P --label L --algorithm rsa-2048|rsa-3072|rsa-4096|ec-p256|ec-p384 [--id HEX]
  hsm-ha-proxy keys import   --config FILE --partition P --label L --file KEY.pem [--id HEX]
  hsm-ha-proxy keys destroy  --config FILE --partition P --label L
  hsm-ha-proxy keys sync     --config FILE --partition P [--dry-run] [--json]
  hsm-ha-proxy keys init-kek --config FILE --partition P --so-pin-file FILE
exit status: 0 done, 1 refused or drift found, 2 usage or config error
`

// keysFlags are the flags of every keys subcommand (each uses its own subset).
type keysFlags struct {
	config, partition, label, algorithm, id, file, soPINFile, logLevel string
	asJSON, dryRun                                                     bool
}

func runKeys(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	verb := args[0]
	var f keysFlags
	fs := flag.NewFlagSet("keys "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, keysUsage) }
	fs.StringVar(&f.config, "config", "", "config file (the one serve reads)")
	fs.StringVar(&f.partition, "partition", "", "partition name")
	fs.StringVar(&f.label, "label", "", "key label (CKA_LABEL)")
	fs.StringVar(&f.algorithm, "algorithm", "", "key algorithm for generate")
	fs.StringVar(&f.id, "id", "", "CKA_ID in hex (default: the SHA-1 of the public key)")
	fs.StringVar(&f.file, "file", "", "PKCS#8 private key (PEM or DER) for import")
	fs.StringVar(&f.soPINFile, "so-pin-file", "", "file holding the partition's security officer PIN (init-kek)")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the audit and device logs on stderr")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON")
	fs.BoolVar(&f.dryRun, "dry-run", false, "sync: only say what would be done")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if f.config == "" || f.partition == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: --config and --partition are required (and nothing else)\n%s", verb, keysUsage)
		return 2
	}
	if msg := f.check(verb); msg != "" {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: %s\n%s", verb, msg, keysUsage)
		return 2
	}
	cfg, err := sidecarconfig.Load(f.config)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: %v\n", verb, err)
		return 2
	}
	lib := cfg.Library()
	if !hasPartition(lib, f.partition) {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: no partition %q in %s\n", verb, f.partition, f.config)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = pkcs11ha.WithActor(ctx, cliActor())
	if verb == "init-kek" {
		return keysInitKEK(ctx, lib, &f, stdout, stderr)
	}
	logger, err := newLogger(stderr, f.logLevel, "text")
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: %v\n", verb, err)
		return 2
	}
	lib.Policy.KeySyncInterval = pkcs11ha.Duration(-time.Second) // this run syncs only when asked to
	cl, err := pkcs11ha.Open(ctx, lib, pkcs11ha.WithLogger(logger))
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: %v\n", verb, err)
		return 1
	}
	defer cl.Close()
	return keysRun(ctx, cl, verb, &f, stdout, stderr, logger)
}

// check says what is wrong with the flags for verb, or "".
func (f *keysFlags) check(verb string) string {
	switch verb {
	case "list", "sync":
	case "generate":
		if f.label == "" || f.algorithm == "" {
			return "--label and --algorithm are required"
		}
	case "import":
		if f.label == "" || f.file == "" {
			return "--label and --file are required"
		}
	case "destroy":
		if f.label == "" {
			return "--label is required"
		}
	case "init-kek":
		if f.soPINFile == "" {
			return "--so-pin-file is required"
		}
	default:
		return fmt.Sprintf("unknown command %q", verb)
	}
	if f.id != "" {
		if _, err := hex.DecodeString(f.id); err != nil {
			return "--id: not hex"
		}
	}
	return ""
}

func hasPartition(cfg *pkcs11ha.Config, name string) bool {
	for _, p := range cfg.Partitions {
		if p.Name == name {
			return true
		}
	}
	return false
}

// cliActor names the operator for the audit lines.
func cliActor() string {
	who := "cli uid " + strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		who += " (" + u.Username + ")"
	}
	return who
}

// keysRun runs one verb on an open cluster.
func keysRun(ctx context.Context, cl *pkcs11ha.Cluster, verb string, f *keysFlags, stdout, stderr io.Writer, log *slog.Logger) int {
	id, _ := hex.DecodeString(f.id)
	fail := func(err error) int {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys %s: %v\n", verb, err)
		var ie *pkcs11ha.InputError
		if errors.As(err, &ie) {
			return 2
		}
		return 1
	}
	switch verb {
	case "list":
		inv, err := cl.Inventory(ctx, f.partition)
		if err != nil {
			return fail(err)
		}
		if f.asJSON {
			writeJSON(stdout, inv)
		} else {
			printInventory(stdout, inv)
		}
		if inventoryDrift(inv) {
			return 1
		}
	case "generate":
		ki, err := cl.GenerateKey(ctx, f.partition, pkcs11ha.KeySpec{Label: f.label, ID: id, Algorithm: f.algorithm})
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "generated %s (%s, id %s, fingerprint %s) on %s\n", ki.Label, ki.Algorithm, ki.ID, ki.Fingerprint, strings.Join(ki.Devices, ", "))
	case "import":
		der, err := readKeyFile(f.file)
		if err != nil {
			fmt.Fprintf(stderr, "hsm-ha-proxy keys import: %v\n", err)
			return 2
		}
		ki, err := cl.ImportKey(ctx, f.partition, pkcs11ha.KeySpec{Label: f.label, ID: id}, der)
		clear(der)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "imported %s (%s, id %s, fingerprint %s) on %s\n", ki.Label, ki.Algorithm, ki.ID, ki.Fingerprint, strings.Join(ki.Devices, ", "))
	case "destroy":
		if err := cl.DestroyKey(ctx, f.partition, f.label); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "destroyed %s (tombstoned)\n", f.label)
	case "sync":
		rep, err := cl.SyncKeys(ctx, f.partition, f.dryRun)
		if err != nil {
			return fail(err)
		}
		if f.asJSON {
			writeJSON(stdout, rep)
		} else {
			printSync(stdout, rep)
		}
		if !rep.Clean() {
			return 1
		}
	}
	return 0
}

// readKeyFile reads a PKCS#8 private key, PEM ("PRIVATE KEY") or DER.
func readKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		clear(b)
		if blk.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("%s: PEM block %q, want \"PRIVATE KEY\" (PKCS#8)", path, blk.Type)
		}
		return blk.Bytes, nil
	}
	return b, nil
}

// keysInitKEK runs the KEK ceremony.
func keysInitKEK(ctx context.Context, cfg *pkcs11ha.Config, f *keysFlags, stdout, stderr io.Writer) int {
	b, err := os.ReadFile(f.soPINFile)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys init-kek: %v\n", err)
		return 2
	}
	pin := strings.TrimRight(string(b), "\r\n")
	clear(b)
	rep, err := pkcs11ha.InitKEK(ctx, cfg, f.partition, pin)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy keys init-kek: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "key-encryption key %s generated on %s, now on: %s\n", rep.ID, rep.Source, strings.Join(rep.Done, ", "))
	for d, why := range rep.Refused {
		fmt.Fprintf(stdout, "  refused by %s: %s\n", d, why)
	}
	if len(rep.Refused) > 0 {
		return 1
	}
	return 0
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
