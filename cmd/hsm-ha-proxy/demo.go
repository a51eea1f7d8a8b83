package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

const demoUsage = `usage: hsm-ha-proxy demo [--duration D] [--no-failover] [--workers N] [--rate R] [--step D]

Runs four SoftHSM2 devices in two regions (eastus local pair, westus DR pair behind a relay with a
one-way delay) and the real sidecar (this binary's "serve") on a unix socket in a temporary directory,
signs and verifies in the background, shows the device table every second and, unless --no-failover,
kills eastus-1, hangs eastus-2, lets DR take over and brings both back. Ctrl-C stops everything and
removes the temporary directory. The exit code is 1 if any operation failed.

`

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
}

// The demo's message and key: what the printed curl command signs.
const (
	demoMessage   = "hello from pkcs11-ha\n"
	demoPartition = "payments"
	demoKeyLabel  = "ec-key"
)

// demoPolicy makes health probes frequent enough for the table to follow the script; routing (attempt
// deadlines, breakers, retries) keeps the library's defaults.
const demoPolicy = "health: {interval: 1s, down_interval: 500ms}"

// runDemo runs the demo subcommand.
func runDemo(args []string) int {
	return demoMain(args, os.Stdout, os.Stderr)
}

func demoMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, demoUsage)
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
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "hsm-ha-proxy demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	case o.workers < 1:
		fmt.Fprintln(stderr, "hsm-ha-proxy demo: --workers must be at least 1")
		return 2
	case o.rate < 0 || o.duration < 0 || o.step <= 0 || o.drDelay < 0:
		fmt.Fprintln(stderr, "hsm-ha-proxy demo: --rate, --duration and --dr-delay must not be negative, --step must be positive")
		return 2
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

	code := d.run(ctx)
	if c := d.cleanup(); c > code {
		code = c
	}
	return code
}

// demo is one run of the demo.
type demo struct {
	opts   demoOptions
	scr    *screen
	stderr io.Writer

	interrupted atomicString  // the signal that stopped the demo, if any
	forced      chan struct{} // closed by a second signal

	tmp     string // the temporary directory, removed by cleanup
	topo    *softhsmtest.Topology
	sidecar *childProc
	client  *sidecarclient.Client
	load    *loadGen
	t0      time.Time    // start of the load, set before the goroutines that read it start
	t0ns    atomic.Int64 // the same for event, which the sidecar's log filter calls at any time

	scriptMu     sync.Mutex
	scriptFailed string // why the script failed, if it did
}

// run sets everything up, runs the load, the table and the script until the end, and returns the exit
// code so far. cleanup stops what run started.
func (d *demo) run(ctx context.Context) int {
	began := time.Now()
	if err := d.setup(ctx); err != nil {
		if ctx.Err() != nil {
			d.event("stopped by %s during the setup", d.interrupted.Load())
			return 0
		}
		fmt.Fprintf(d.stderr, "hsm-ha-proxy demo: %v\n", err)
		return 1
	}
	setupTook := time.Since(began)

	keys, sample, err := d.prepareKeys(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		fmt.Fprintf(d.stderr, "hsm-ha-proxy demo: %v\n", err)
		return 1
	}
	d.printHeader(setupTook, sample)

	d.t0 = time.Now()
	d.t0ns.Store(d.t0.UnixNano())
	d.load = startLoad(keys, deviceNames(d.topo), d.opts.workers, d.opts.rate, d.t0, d.onLoadError)

	runCtx := ctx
	if d.opts.duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, d.opts.duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.tableLoop(runCtx)
	}()
	if !d.opts.noFailover {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.script(runCtx)
		}()
	}
	<-runCtx.Done()
	wg.Wait()
	switch {
	case ctx.Err() != nil:
		d.event("stopping (%s)", d.interrupted.Load())
	default:
		d.event("stopping (--duration %v reached)", d.opts.duration)
	}
	return 0
}

// setup creates the temporary directory, starts the devices and the sidecar, and waits until it is ready.
func (d *demo) setup(ctx context.Context) error {
	if _, err := softhsmtest.LookupTools(); err != nil {
		return fmt.Errorf("%w\n(`make run` installs them: apt-get install softhsm2 p11-kit p11-kit-modules)", err)
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program to run its serve command: %w", err)
	}
	tmp, err := os.MkdirTemp("", "hsm-ha-demo-")
	if err != nil {
		return err
	}
	d.tmp = tmp
	sock := filepath.Join(tmp, "proxy.sock")
	if len(sock) > 100 {
		return fmt.Errorf("socket path %s is too long for a unix socket: set TMPDIR to a short directory", sock)
	}

	wanted := []string{"ec-key", "rsa-key"}
	var keys []softhsmtest.KeySpec
	for _, k := range softhsmtest.DefaultKeys() {
		if slices.Contains(wanted, k.Label) {
			keys = append(keys, k)
		}
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	topo, err := softhsmtest.Start(startCtx, softhsmtest.Options{
		Dir:     filepath.Join(tmp, "devices"),
		Devices: softhsmtest.DefaultTopology(d.opts.drDelay),
		Keys:    keys,
	})
	if err != nil {
		return fmt.Errorf("starting the SoftHSM2 devices: %w", err)
	}
	d.topo = topo
	if err := ctx.Err(); err != nil {
		return err
	}

	cfgPath := filepath.Join(tmp, "hsm-ha.yaml")
	partitions := make([]string, 0, len(topo.Partitions))
	for _, p := range topo.Partitions {
		partitions = append(partitions, p.Name)
	}
	if err := topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
		PolicyYAML: demoPolicy,
		ServerYAML: fmt.Sprintf("listen: %q", "unix://"+sock),
		ClientsYAML: fmt.Sprintf("- {name: demo-user, unix_uid: %d, partitions: [%s]}",
			os.Getuid(), strings.Join(partitions, ", ")),
	}); err != nil {
		return err
	}

	logPath := filepath.Join(tmp, "sidecar.log")
	d.sidecar, err = startSidecar(bin, []string{"serve", "--config", cfgPath, "--log-format", "json"}, logPath, d.onSidecarLog)
	if err != nil {
		return fmt.Errorf("starting the sidecar: %w", err)
	}
	d.client = sidecarclient.Dial(sock)
	d.client.Timeout = 10 * time.Second

	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		ok, _ := d.client.Ready(rctx)
		rcancel()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.sidecar.done:
			return fmt.Errorf("the sidecar exited before it was ready (%v); its log %s:\n%s", d.sidecar.err, logPath, tail(logPath, 2048))
		case <-deadline.C:
			return fmt.Errorf("the sidecar was not ready within 60 s; its log %s:\n%s", logPath, tail(logPath, 2048))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// prepareKeys fetches the load's keys from the sidecar, checks them against the keys the harness
// imported, writes the demo key's public key and message for openssl, and makes the sample signature the
// printed curl command asks for (so the command is known to work).
func (d *demo) prepareKeys(ctx context.Context) ([]loadKey, sampleSig, error) {
	var sample sampleSig
	specs := []struct {
		partition, label string
		opts             crypto.SignerOpts
		what             string
	}{
		{demoPartition, demoKeyLabel, crypto.SHA256, "ECDSA P-256"},
		{"ledger", "rsa-key", crypto.SHA256, "RSA-2048 PKCS#1 v1.5"},
	}
	var keys []loadKey
	for _, s := range specs {
		k, err := d.client.Key(ctx, s.partition, s.label)
		if err != nil {
			return nil, sample, fmt.Errorf("fetching %s/%s from the sidecar: %w", s.partition, s.label, err)
		}
		want := d.topo.Keys[s.label]
		if want == nil {
			return nil, sample, fmt.Errorf("the harness has no key %q", s.label)
		}
		pub := want.Public()
		if eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(k.Public()) {
			return nil, sample, fmt.Errorf("%s/%s: the sidecar's public key is not the key imported into the devices", s.partition, s.label)
		}
		keys = append(keys, loadKey{key: k, pub: pub, opts: s.opts, name: s.partition + "/" + s.label, what: s.what})
	}

	digest := sha256.Sum256([]byte(demoMessage))
	sample.digestB64 = base64.StdEncoding.EncodeToString(digest[:])
	sample.msgPath = filepath.Join(d.tmp, "message.txt")
	sample.pubPath = filepath.Join(d.tmp, demoKeyLabel+".pub.pem")
	sample.sigPath = filepath.Join(d.tmp, "signature.der")
	der, err := x509.MarshalPKIXPublicKey(keys[0].pub)
	if err != nil {
		return nil, sample, err
	}
	if err := os.WriteFile(sample.pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return nil, sample, err
	}
	if err := os.WriteFile(sample.msgPath, []byte(demoMessage), 0o644); err != nil {
		return nil, sample, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sig, dev, err := keys[0].key.SignDevice(sctx, digest[:], crypto.SHA256)
	if err != nil {
		return nil, sample, fmt.Errorf("signing the sample digest: %w", err)
	}
	if !keys[0].verify(digest[:], sig) {
		return nil, sample, errors.New("the sample signature does not verify")
	}
	sample.sigB64, sample.device = base64.StdEncoding.EncodeToString(sig), dev
	return keys, sample, nil
}

// sampleSig is the signature of demoMessage the header shows, and the files to verify it with openssl.
type sampleSig struct {
	digestB64, sigB64, device string
	msgPath, pubPath, sigPath string
}

func (d *demo) printHeader(setupTook time.Duration, s sampleSig) {
	var b strings.Builder
	fmt.Fprintf(&b, "hsm-ha-proxy demo: %d SoftHSM2 devices in 2 regions behind the sidecar (ready in %.1fs)\n",
		len(d.topo.Devices), setupTook.Seconds())
	if d.opts.keep {
		fmt.Fprintf(&b, "  temp dir:  %s (kept at the end: --keep)\n", d.tmp)
	} else {
		fmt.Fprintf(&b, "  temp dir:  %s (removed at the end)\n", d.tmp)
	}
	for _, dev := range d.topo.Devices {
		role := "local pair, tier 0"
		if dev.Region != d.topo.LocalRegion {
			role = fmt.Sprintf("DR, tier 1, %v one-way through the relay", d.opts.drDelay)
		}
		fmt.Fprintf(&b, "  device:    %-9s %-7s %-46s p11-kit server pid %d\n", dev.Name, dev.Region, "("+role+")", dev.PID())
	}
	parts := make([]string, 0, len(d.topo.Partitions))
	for _, p := range d.topo.Partitions {
		parts = append(parts, p.Name)
	}
	fmt.Fprintf(&b, "  partitions: %s, each with ec-key (P-256) and rsa-key (RSA-2048) cloned on every device\n", strings.Join(parts, ", "))
	fmt.Fprintf(&b, "  sidecar:   %s serve --config %s   pid %d (log %s)\n",
		filepath.Base(d.sidecar.path), filepath.Join(d.tmp, "hsm-ha.yaml"), d.sidecar.pid, d.sidecar.logPath)
	fmt.Fprintf(&b, "  socket:    %s\n", d.sidecarSocket())
	fmt.Fprintf(&b, "  load:      %d workers signing with payments/ec-key (ECDSA) and ledger/rsa-key (RSA PKCS#1 v1.5) through the socket,\n", d.opts.workers)
	fmt.Fprintf(&b, "             every signature verified with Go's crypto/ecdsa and crypto/rsa; %s\n", rateText(d.opts.rate))
	b.WriteString("\n")
	fmt.Fprintf(&b, "Sign something yourself while the demo runs (the digest is SHA-256 of %q in %s):\n", demoMessage, s.msgPath)
	fmt.Fprintf(&b, "  %s\n", d.curlCommand(s))
	fmt.Fprintf(&b, "  e.g. -> {\"signature\":\"%s\",\"device\":\"%s\"}\n", s.sigB64, s.device)
	fmt.Fprintf(&b, "Public key: %s. Sign and verify with openssl:\n", s.pubPath)
	fmt.Fprintf(&b, "  %s | sed -E 's/.*\"signature\":\"([^\"]*)\".*/\\1/' | base64 -d > %s && openssl dgst -sha256 -verify %s -signature %s %s\n",
		d.curlCommand(s), s.sigPath, s.pubPath, s.sigPath, s.msgPath)
	if d.opts.noFailover {
		b.WriteString("\nNo failover script (--no-failover). Ctrl-C to stop.\n")
	} else {
		st := d.opts.step
		fmt.Fprintf(&b, "\nFailover script: kill eastus-1 at %v, pause eastus-2 at %v, bring both back at %v. Ctrl-C to stop.\n",
			st, 2*st, 3*st)
	}
	if d.opts.duration > 0 {
		fmt.Fprintf(&b, "The demo stops by itself after %v.\n", d.opts.duration)
	}
	d.scr.event(strings.TrimRight(b.String(), "\n"))
}

func rateText(rate float64) string {
	if rate <= 0 {
		return "as fast as they go"
	}
	return fmt.Sprintf("at most %.0f signatures/s in all (--rate)", rate)
}

func (d *demo) sidecarSocket() string { return filepath.Join(d.tmp, "proxy.sock") }

// curlCommand is the one-line curl command that signs the sample digest through the sidecar.
func (d *demo) curlCommand(s sampleSig) string {
	body := fmt.Sprintf(`{"digest":"%s","algorithm":"ECDSA_SHA256"}`, s.digestB64)
	return fmt.Sprintf("curl -s --unix-socket %s -H 'Content-Type: application/json' -d '%s' http://localhost/v1/partitions/%s/keys/%s/sign",
		shellQuote(d.sidecarSocket()), body, demoPartition, demoKeyLabel)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// event prints one line with the time since the start of the load.
func (d *demo) event(format string, args ...any) {
	prefix := "[ setup] "
	if ns := d.t0ns.Load(); ns != 0 {
		prefix = fmt.Sprintf("[%5.1fs] ", time.Since(time.Unix(0, ns)).Seconds())
	}
	d.scr.event(prefix + fmt.Sprintf(format, args...))
}

// stepEvent prints a script line with the number of failed operations so far.
func (d *demo) stepEvent(format string, args ...any) {
	d.event("%s | failed ops so far: %d", fmt.Sprintf(format, args...), d.load.failedCount())
}

func (d *demo) failScript(why string) {
	d.scriptMu.Lock()
	defer d.scriptMu.Unlock()
	if d.scriptFailed == "" {
		d.scriptFailed = why
	}
}

// onSidecarLog shows an event of the sidecar's log.
func (d *demo) onSidecarLog(ev string) {
	d.event("  sidecar: %s", ev)
}

// onLoadError shows the first failed operations.
func (d *demo) onLoadError(n int64, keyName string, err error) {
	if n <= 5 {
		d.event("FAILED operation #%d (%s): %v", n, keyName, err)
	} else if n == 6 {
		d.event("more operations failed; only the count is shown from now on")
	}
}

// cleanup stops the load, resumes a paused device, stops the sidecar (SIGTERM, SIGKILL after 10 s or at a
// second Ctrl-C), stops every device and removes the temporary directory. It returns 1 when an operation
// or the script failed or something could not be stopped.
func (d *demo) cleanup() int {
	code := 0
	if d.topo != nil {
		// Calls stuck in a paused device must return before the load and the sidecar can stop.
		for _, dev := range d.topo.Devices {
			if dev.Paused() {
				_ = dev.Resume()
			}
		}
	}
	var total, failed int64
	var byDevice map[string]int64
	if d.load != nil {
		stopped := make(chan struct{})
		go func() {
			d.load.stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-d.forced:
		case <-time.After(15 * time.Second):
			d.event("the load did not stop within 15 s; going on")
		}
		total, failed, byDevice = d.load.totals()
	}
	if d.client != nil {
		_ = d.client.Close()
	}
	if d.sidecar != nil {
		if err := d.sidecar.stop(10*time.Second, d.forced); err != nil {
			d.event("sidecar: %v", err)
			code = 1
		} else {
			d.event("sidecar (pid %d) stopped: %s", d.sidecar.pid, d.sidecar.exitText())
		}
	}
	if d.topo != nil {
		if err := d.topo.Close(); err != nil {
			d.event("stopping the devices: %v", err)
			code = 1
		} else {
			d.event("devices stopped (every p11-kit server process group reaped)")
		}
	}
	if d.tmp != "" && d.opts.keep {
		d.event("kept %s (--keep): sidecar log %s", d.tmp, filepath.Join(d.tmp, "sidecar.log"))
	} else if d.tmp != "" {
		if err := os.RemoveAll(d.tmp); err != nil {
			d.event("removing %s: %v", d.tmp, err)
			code = 1
		} else {
			d.event("removed %s", d.tmp)
		}
	}
	if d.load != nil {
		names := deviceNames(d.topo)
		parts := make([]string, 0, len(names))
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %d", n, byDevice[n]))
		}
		d.event("done: %d operations, %d failed (%s)", total, failed, strings.Join(parts, ", "))
		if failed > 0 {
			code = 1
		}
	}
	d.scriptMu.Lock()
	why := d.scriptFailed
	d.scriptMu.Unlock()
	if why != "" {
		d.event("the failover script failed: %s", why)
		code = 1
	}
	return code
}

func deviceNames(t *softhsmtest.Topology) []string {
	if t == nil {
		return nil
	}
	names := make([]string, len(t.Devices))
	for i, d := range t.Devices {
		names[i] = d.Name
	}
	return names
}

// tail returns the last n bytes of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// atomicString is a string set once by the signal goroutine.
type atomicString struct {
	mu sync.Mutex
	s  string
}

func (a *atomicString) Store(s string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.s = s
}

func (a *atomicString) Load() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.s == "" {
		return "a signal"
	}
	return a.s
}
