package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Options configure Run. Zero fields get the defaults of `make bench`.
type Options struct {
	Rounds     int           // in-process: slices per cell, the contenders taking turns slice by slice; default 6
	Cell       time.Duration // measured time per cell and contender (Rounds slices of Cell/Rounds); default 3 s
	Warmup     time.Duration // unmeasured load before each cell; default 300 ms
	Algs       []string      // default ECDSA P-256, RSA-2048 and the secret-key rows (AES-256-GCM seal/open, HMAC-SHA256)
	Goroutines []int         // in-process concurrencies; default 1, 8
	Contenders []string      // in-process contender labels; default all four
	P11Rounds  int           // p11-kit slow-device runs per pattern and hedge setting (steady: once); default 3
	LossTrials int           // region-loss trials per mode; default 2
	Upgrades   int           // upgrade: hot upgrades under load; default 5
	Sections   []string      // "routing", "inproc", "p11kit", "frontend", "upgrade"; default all
	SlowModes  []string      // slow-device patterns; default all (see slowModes)
	SkipP11    []string      // p11-kit parts to skip: "healthy", "loss" (for focused runs)
	ProfileDir string        // when set, in-process and front-end children, and the sidecar, write CPU profiles here
	Sidecar    string        // front end: the hsm-ha-proxy binary; default built from this module
	PlotDir    string        // when set, pictures of the p11-kit region loss and slow device go here
	Verbose    bool          // progress shows every slice
	Dir        string        // working directory for the topologies; default a temporary one, removed
	Out        io.Writer     // the table; default os.Stdout
	Progress   io.Writer     // progress lines; default os.Stderr
}

func (o Options) withDefaults() Options {
	if o.Rounds <= 0 {
		o.Rounds = 6
	}
	if o.Cell <= 0 {
		o.Cell = 3 * time.Second
	}
	if o.Warmup <= 0 {
		o.Warmup = 300 * time.Millisecond
	}
	if len(o.Algs) == 0 {
		o.Algs = []string{ECP256, RSA2048, AESSeal, AESOpen, HMAC256}
	}
	if len(o.Goroutines) == 0 {
		o.Goroutines = []int{1, 8}
	}
	if o.P11Rounds <= 0 {
		o.P11Rounds = 3
	}
	if o.LossTrials <= 0 {
		o.LossTrials = 2
	}
	if o.Upgrades <= 0 {
		o.Upgrades = 5
	}
	if len(o.Sections) == 0 {
		o.Sections = []string{"routing", "inproc", "p11kit", "frontend", "upgrade"}
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Progress == nil {
		o.Progress = os.Stderr
	}
	return o
}

func (o Options) has(section string) bool {
	for _, s := range o.Sections {
		if s == section {
			return true
		}
	}
	return false
}

// Report is everything one run measured.
type Report struct {
	Machine  string
	Started  time.Time
	Elapsed  time.Duration
	Options  Options
	Routing  *RoutingResult
	Inproc   []*InprocCell
	Healthy  []*HealthyCell
	Loss     []LossTrial
	Slow     []SlowCell
	Frontend *FrontendRun
	Upgrade  *UpgradeRun
	LoadBeg  float64
	LoadEnd  float64
}

// Run measures everything and writes the table to o.Out; its last line is the BENCH summary (when the
// in-process or the front-end section ran).
func Run(ctx context.Context, o Options) error {
	o = o.withDefaults()
	progress := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }
	rep := &Report{Machine: machine(), Started: time.Now(), Options: o, LoadBeg: loadAvg()}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "hsm-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	runChild := func(s Spec, d time.Duration) (Result, error) { return child(ctx, self, s, d) }
	progress("hsm-bench: %s; load %.2f", rep.Machine, rep.LoadBeg)

	if o.has("routing") {
		progress("routing decision: testing.Benchmark of failover.Router.Pick, four members ...")
		rr, err := benchPick(3)
		if err != nil {
			return err
		}
		rep.Routing = &rr
		progress("  %.1f ns/op, %d allocs/op", rr.NsPerOp, rr.AllocsPerOp)
	}
	if o.has("inproc") {
		progress("in-process SoftHSM: %d cells x %d contenders, %v each in %d slices taken in turn ...",
			len(o.Algs)*len(o.Goroutines), max(len(o.Contenders), len(contenderOrder)), o.Cell, o.Rounds)
		cells, err := inproc(ctx, o, filepath.Join(dir, "inproc"), self, progress)
		if err != nil {
			return err
		}
		rep.Inproc = cells
	}
	if o.has("p11kit") {
		if err := runP11Kit(ctx, o, rep, filepath.Join(dir, "p11kit"), runChild, progress); err != nil {
			return err
		}
	}
	if o.has("frontend") {
		progress("PKCS#11 front end vs p11-kit server: %d cells x 2 contenders, %v each in %d slices taken in turn ...",
			len(o.Goroutines), o.Cell, o.Rounds)
		fr, err := frontend(ctx, o, filepath.Join(dir, "frontend"), self, progress)
		if err != nil {
			return err
		}
		rep.Frontend = fr
	}
	if o.has("upgrade") {
		progress("hot upgrades: %d, a client signing through the front end ...", o.Upgrades)
		ur, err := upgrades(ctx, o, filepath.Join(dir, "upgrade"), self, progress)
		if err != nil {
			return err
		}
		rep.Upgrade = ur
	}
	rep.Elapsed = time.Since(rep.Started)
	rep.LoadEnd = loadAvg()
	rep.write(o.Out)
	return nil
}

func runP11Kit(ctx context.Context, o Options, rep *Report, dir string, runChild childRunner, progress func(string, ...any)) error {
	progress("p11-kit harness: 4 devices, DR %v one-way ...", drDelay)
	e, err := startP11Kit(ctx, o, dir)
	if err != nil {
		return err
	}
	defer e.close()
	const g = 4
	skip := func(part string) bool {
		for _, s := range o.SkipP11 {
			if s == part {
				return true
			}
		}
		return false
	}
	if !skip("healthy") {
		hc, err := e.healthy(ctx, []int{1, g}, healthyRounds, runChild)
		if err != nil {
			return err
		}
		rep.Healthy = hc
	}
	for _, c := range rep.Healthy {
		progress("  healthy pair, %d gor: p50 %s (direct eastus-1 %s), DR share %.2f%%", c.Goroutines,
			fmtDur(c.HA[len(c.HA)-1].P50), fmtDur(c.Direct[len(c.Direct)-1].P50), 100*c.DRShare[len(c.DRShare)-1])
	}
	for range o.LossTrials {
		if skip("loss") {
			break
		}
		for _, mode := range []string{"kill", "partition"} {
			tr, err := e.regionLoss(ctx, mode, g, progress)
			if err != nil {
				return err
			}
			rep.Loss = append(rep.Loss, tr)
			progress("  local region lost (%s): first success after %s on %s, %d caller errors, slowest %s",
				mode, fmtDur(tr.FirstSuccess), tr.FirstDev, tr.Errors, fmtDur(tr.Slowest))
		}
	}
	for r := range o.P11Rounds {
		modes := o.SlowModes
		if len(modes) == 0 {
			modes = slowModes
		}
		for _, mode := range modes {
			if mode == "steady" && r > 0 {
				continue // 13 s a run: once
			}
			for i, hedge := range []bool{false, true} {
				if r%2 == 1 {
					hedge = i == 0 // alternate which runs first
				}
				c, err := e.slow(ctx, mode, hedge, g)
				if err != nil {
					return err
				}
				rep.Slow = append(rep.Slow, c)
				progress("  slow eastus-1 (%s), hedge %v: p50 %s p99 %s p99.9 %s max %s, eastus-1 share %.2f%%, hedged %.2f%%, extra attempts %.2f%%",
					mode, hedge, fmtDur(c.Sum.P50), fmtDur(c.Sum.P99), fmtDur(c.P999), fmtDur(c.Sum.Max), 100*c.E1Share, 100*c.Hedges, 100*c.Extra)
			}
		}
	}
	if o.PlotDir != "" {
		plotHedging(o.PlotDir, rep.Slow, g, progress)
	}
	return nil
}

// healthyRounds is how often the healthy-pair cells run (pkcs11ha and direct alternating).
const healthyRounds = 2

// childProc is a running child process (this program, with its Spec in ChildEnv).
type childProc struct {
	spec   Spec
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Scanner
	stderr *bytes.Buffer
	cancel context.CancelFunc
}

// startChild starts a child and waits until it has set up and warmed up its contender.
func startChild(ctx context.Context, self string, s Spec) (*childProc, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), ChildEnv+"="+string(b))
	c := &childProc{spec: s, cmd: cmd, stderr: &bytes.Buffer{}, cancel: cancel}
	cmd.Stderr = c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		cancel()
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	c.stdout = bufio.NewScanner(out)
	c.stdout.Buffer(make([]byte, 1<<16), 1<<24)
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	var ready struct{ Ready bool }
	if err := c.read(&ready); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *childProc) read(v any) error {
	if !c.stdout.Scan() {
		c.kill()
		return fmt.Errorf("child %s: %s", c.spec.Contender, strings.TrimSpace(c.stderr.String()))
	}
	return json.Unmarshal(c.stdout.Bytes(), v)
}

func (c *childProc) send(cmd command) error {
	b, _ := json.Marshal(cmd)
	_, err := c.stdin.Write(append(b, '\n'))
	return err
}

// slice runs one measured slice of d.
func (c *childProc) slice(d time.Duration) (Slice, error) { return c.measure("run", d) }

// measure runs one slice of d with command cmd ("run" or "trace").
func (c *childProc) measure(cmd string, d time.Duration) (Slice, error) {
	if err := c.send(command{Cmd: cmd, D: d}); err != nil {
		return Slice{}, err
	}
	var s Slice
	err := c.read(&s)
	return s, err
}

// done collects the Result over every slice and waits for the child to exit.
func (c *childProc) done() (Result, error) {
	defer c.cancel()
	if err := c.send(command{Cmd: "done"}); err != nil {
		return Result{}, err
	}
	var r Result
	if err := c.read(&r); err != nil {
		return Result{}, err
	}
	_ = c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		return r, fmt.Errorf("child %s: %w: %s", c.spec.Contender, err, strings.TrimSpace(c.stderr.String()))
	}
	return r, nil
}

func (c *childProc) kill() {
	c.cancel()
	_ = c.cmd.Wait()
}

// child runs one spec as a single slice of d in a child process of its own.
func child(ctx context.Context, self string, s Spec, d time.Duration) (Result, error) {
	c, err := startChild(ctx, self, s)
	if err != nil {
		return Result{}, err
	}
	if _, err := c.slice(d); err != nil {
		c.kill()
		return Result{}, err
	}
	return c.done()
}

// machine describes the machine: CPU model and count, memory, kernel, Go, SoftHSM.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %d GiB", (kb+1<<19)>>20)
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	softhsm := ""
	if out, err := exec.Command("softhsm2-util", "--version").Output(); err == nil {
		softhsm = ", SoftHSM " + strings.TrimSpace(string(out))
	}
	p11kit := ""
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "p11-kit").Output(); err == nil {
		p11kit = ", p11-kit " + strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%s, %d vCPU%s%s, %s%s%s", cpu, runtime.NumCPU(), mem, kernel, runtime.Version(), softhsm, p11kit)
}
