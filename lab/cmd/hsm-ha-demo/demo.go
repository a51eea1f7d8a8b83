package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/lab/timeline"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// demoPolicy makes health probes frequent enough for the table to follow the script; routing (attempt
// deadlines, breakers, retries) keeps the library's defaults.
const demoPolicy = "health: {interval: 1s, down_interval: 500ms}"

// demo is one run of the demo.
type demo struct {
	opts   demoOptions
	scr    *screen
	stderr io.Writer

	interrupted atomicString  // the signal that stopped the demo, if any
	forced      chan struct{} // closed by a second signal

	tmp       string // the temporary directory, removed by cleanup
	p11Client string // the distribution's p11-kit-client.so, which the printed pkcs11-tool commands load
	topo      *softhsmtest.Topology
	sidecar   *childProc
	client    *sidecarclient.Client
	load      *loadGen
	rec       *timeline.Recorder // every call of the load and every step, for the pictures; nil before the load
	t0        time.Time          // start of the load, set before the goroutines that read it start
	t0ns      atomic.Int64       // the same for event, which the sidecar's log filter calls at any time

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
		fmt.Fprintf(d.stderr, "hsm-ha-demo: %v\n", err)
		return 1
	}
	setupTook := time.Since(began)

	keys, sample, err := d.prepareKeys(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		fmt.Fprintf(d.stderr, "hsm-ha-demo: %v\n", err)
		return 1
	}
	d.printHeader(setupTook, sample)

	d.rec = newRecorder(d.topo, d.opts)
	d.t0 = d.rec.Run().Origin // the pictures' time axis and the event lines' times agree
	d.t0ns.Store(d.t0.UnixNano())
	d.load = startLoad(keys, deviceNames(d.topo), d.opts.workers, d.opts.rate, d.t0, d.onLoadError, d.rec.Add)

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
	if ctx.Err() != nil {
		d.mark("stopped (" + d.interrupted.Load() + ")")
	}
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
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		return fmt.Errorf("%w\n(`make run` installs them: apt-get install softhsm2 p11-kit p11-kit-modules)", err)
	}
	d.p11Client = tools.P11KitClient
	if d.opts.report != "" {
		if err := checkReportDir(d.opts.report); err != nil {
			return err
		}
	}
	proxyBin, err := findProxy(d.opts.proxyBin)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "hsm-ha-demo-")
	if err != nil {
		return err
	}
	d.tmp = tmp
	for _, sock := range []string{d.sidecarSocket(), d.pkcs11Socket()} {
		if len(sock) > 100 {
			return fmt.Errorf("socket path %s is too long for a unix socket: set TMPDIR to a short directory", sock)
		}
	}
	if err := d.startDevices(ctx); err != nil {
		return err
	}
	cfgPath := filepath.Join(tmp, "hsm-ha.yaml")
	if err := d.writeConfig(cfgPath); err != nil {
		return err
	}
	logPath := filepath.Join(tmp, "sidecar.log")
	d.sidecar, err = startSidecar(proxyBin, []string{"serve", "--config", cfgPath, "--log-format", "json"}, logPath, d.onSidecarLog)
	if err != nil {
		return fmt.Errorf("starting the sidecar %s: %w", proxyBin, err)
	}
	d.client = sidecarclient.Dial(d.sidecarSocket())
	d.client.Timeout = 10 * time.Second
	return d.waitReady(ctx, logPath)
}

// startDevices starts the four devices with the two keys the load uses.
func (d *demo) startDevices(ctx context.Context) error {
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
		Dir:     filepath.Join(d.tmp, "devices"),
		Devices: softhsmtest.DefaultTopology(d.opts.drDelay),
		Keys:    keys,
	})
	if err != nil {
		return fmt.Errorf("starting the SoftHSM2 devices: %w", err)
	}
	d.topo = topo
	return ctx.Err()
}

// writeConfig writes the sidecar's config: the topology, the demo's policy, the HTTP socket and the
// PKCS#11 front end's socket, and this user as the one client, granted every partition (on both doors).
func (d *demo) writeConfig(path string) error {
	partitions := make([]string, 0, len(d.topo.Partitions))
	for _, p := range d.topo.Partitions {
		partitions = append(partitions, p.Name)
	}
	return d.topo.WriteConfig(path, softhsmtest.ConfigOptions{
		PolicyYAML: strings.TrimSpace(demoPolicy + "\n" + d.opts.policy),
		ServerYAML: fmt.Sprintf("listen: %q\npkcs11: %q", "unix://"+d.sidecarSocket(), "unix://"+d.pkcs11Socket()),
		ClientsYAML: fmt.Sprintf("- {name: demo-user, unix_uid: %d, partitions: [%s]}",
			os.Getuid(), strings.Join(partitions, ", ")),
	})
}

// waitReady waits until the sidecar answers /readyz, exits, or 60 s pass.
func (d *demo) waitReady(ctx context.Context, logPath string) error {
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
// second Ctrl-C), stops every device, removes the temporary directory and, once the load has started,
// writes the pictures. It returns 1 when an operation or the script failed, something could not be
// stopped or the pictures could not be written.
func (d *demo) cleanup() int {
	code := 0
	if d.topo != nil {
		// Calls stuck in a paused device must return before the load and the sidecar can stop.
		for _, dev := range d.topo.Devices {
			if dev.Paused() {
				_ = dev.Resume()
				d.bandEnd(regionOutBand) // the pictures end the outage here, not when they are drawn
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
	// Also after a Ctrl-C: the pictures of an interrupted run are still worth having.
	if c := d.writePictures(); c > code {
		code = c
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
