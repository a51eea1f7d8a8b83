package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// Contender labels of the front-end section, in table order.
const (
	labFront  = "(a) front end, local pair"
	labP11Kit = "(b) p11-kit server, 1 device"
)

// frontPIN is what the front end's client logs in with: the front end takes any PIN (access is the
// peer's uid), so the bench client never learns the partition's.
const frontPIN = "not-the-pin"

// sidecarPkg is what hsm-bench builds when Options.Sidecar is empty.
const sidecarPkg = "github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy"

// FrontendRun is the front-end section: one cell per concurrency (ECDSA P-256), and what the sidecar
// process spent.
type FrontendRun struct {
	Cells []*InprocCell
	// SidecarCPU is the sidecar's user+system CPU time per successful front-end signature, per goroutine
	// count, over the front end's turns only.
	SidecarCPU map[int]time.Duration
	// DeviceCPU is the devices' CPU time (their `p11-kit server` process groups: both for (a), eastus-1 for
	// (b)) per successful signature, per contender and goroutine count, over that contender's turns.
	DeviceCPU map[string]map[int]time.Duration
	Profile   string // the sidecar's CPU profile, when one was written
}

// frontend measures a Go client (miekg/pkcs11 through the stock p11-kit-client.so, in a child process) at
// each concurrency against (a) `hsm-ha-proxy serve` (server.pkcs11) with a cluster over the local pair and
// (b) eastus-1's own `p11-kit server`. The cluster reaches both devices on their servers' own sockets, as
// the client of (b) does: no relay of the harness sits on either path. The two clients take turns as the
// in-process contenders do.
func frontend(ctx context.Context, o Options, dir, self string, progress func(string, ...any)) (*FrontendRun, error) {
	topo, err := softhsmtest.Start(ctx, softhsmtest.Options{
		Dir: dir,
		Devices: []softhsmtest.DeviceSpec{
			{Name: "eastus-1", Region: "eastus"},
			{Name: "eastus-2", Region: "eastus"},
		},
		Partitions: []softhsmtest.PartitionSpec{benchPartition},
		Keys:       []softhsmtest.KeySpec{ecKey},
	})
	if err != nil {
		return nil, err
	}
	defer topo.Close()
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		return nil, err
	}
	bin, err := sidecarBinary(ctx, o, dir)
	if err != nil {
		return nil, err
	}
	run := &FrontendRun{SidecarCPU: map[int]time.Duration{}, DeviceCPU: map[string]map[int]time.Duration{labFront: {}, labP11Kit: {}}}
	if o.ProfileDir != "" {
		run.Profile = filepath.Join(o.ProfileDir, "sidecar-frontend.pprof")
	}
	sc, err := startSidecar(ctx, topo, bin, run.Profile)
	if err != nil {
		return nil, err
	}
	defer sc.stop(progress)
	progress("  sidecar %s serving %s (log %s)", bin, sc.socket, sc.logPath)

	e1 := topo.Device("eastus-1")
	specs := map[string]Spec{
		labFront: {Contender: Direct, Module: tools.P11KitClient, TokenLabel: benchPartition.Name, PIN: frontPIN,
			ModuleEnv: map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=" + sc.socket}},
		labP11Kit: {Contender: Direct, Module: tools.P11KitClient, TokenLabel: benchPartition.TokenLabel, PIN: benchPartition.PIN,
			ModuleEnv: map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=" + e1.ServerSocket}},
	}
	pub, err := pubDER(topo.Keys[ecKey.Label])
	if err != nil {
		return nil, err
	}
	// CPU time over each contender's turns: the sidecar's, and the devices' it uses.
	sideCPU := map[int]time.Duration{}
	devCPU := map[string]map[int]time.Duration{labFront: {}, labP11Kit: {}}
	devs := map[string][]*softhsmtest.Device{labFront: topo.Devices, labP11Kit: {e1}}
	devTime := func(lab string) time.Duration {
		var t time.Duration
		for _, d := range devs[lab] {
			t += groupCPU(d.PID())
		}
		return t
	}
	ir := inprocRun{o: o, self: self, specs: specs, contenders: []string{labFront, labP11Kit}, progress: progress,
		turn: func(lab string, c *InprocCell) func() {
			s0, d0 := sc.cpu(), devTime(lab)
			return func() {
				if lab == labFront {
					sideCPU[c.Goroutines] += sc.cpu() - s0
				}
				devCPU[lab][c.Goroutines] += devTime(lab) - d0
			}
		}}
	for _, g := range o.Goroutines {
		c := &InprocCell{Alg: ECP256, Goroutines: g, Results: map[string]Result{}}
		if err := ir.cell(ctx, c, ecKey, pub); err != nil {
			return nil, err
		}
		run.Cells = append(run.Cells, c)
		if n := c.Results[labFront].Ops; n > 0 {
			run.SidecarCPU[g] = sideCPU[g] / time.Duration(n)
		}
		for _, lab := range []string{labFront, labP11Kit} {
			if n := c.Results[lab].Ops; n > 0 {
				run.DeviceCPU[lab][g] = devCPU[lab][g] / time.Duration(n)
			}
		}
		progress("    (a)/(b) %.3f; CPU per signature: sidecar %s, devices (a) %s (b) %s", c.ratio(labFront, labP11Kit),
			fmtDur(run.SidecarCPU[g]), fmtDur(run.DeviceCPU[labFront][g]), fmtDur(run.DeviceCPU[labP11Kit][g]))
	}
	return run, nil
}

// sidecarBinary returns Options.Sidecar, or builds cmd/hsm-ha-proxy into dir (with the cpuprofile tag
// when profiles are asked for: the same binary plus a CPU profile hook).
func sidecarBinary(ctx context.Context, o Options, dir string) (string, error) {
	if o.Sidecar != "" {
		return o.Sidecar, nil
	}
	bin := filepath.Join(dir, "hsm-ha-proxy")
	args := []string{"build", "-o", bin}
	if o.ProfileDir != "" {
		args = append(args, "-tags", "cpuprofile")
	}
	out, err := exec.CommandContext(ctx, "go", append(args, sidecarPkg)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building %s (run hsm-bench inside the repository's workspace, or pass -sidecar): %w: %s", sidecarPkg, err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// sidecar is a running `hsm-ha-proxy serve`.
type sidecar struct {
	cmd     *exec.Cmd // the first process (a hot upgrade's are not this program's children)
	exited  chan error
	socket  string // server.pkcs11
	sockDir string
	logPath string
	pidFile string // server.pid_file: the serving process
}

// startSidecar writes the sidecar's config (the devices on their own server sockets, this uid granted the
// benchmark partition) and starts it, returning once its PKCS#11 socket accepts connections. The log
// level is the default (info: an access log line per signature), written to a file.
func startSidecar(ctx context.Context, topo *softhsmtest.Topology, bin, profile string) (*sidecar, error) {
	sockDir, err := os.MkdirTemp("", "hfe") // short: sun_path holds 108 bytes
	if err != nil {
		return nil, err
	}
	sc := &sidecar{sockDir: sockDir, socket: filepath.Join(sockDir, "pkcs11.sock"), logPath: filepath.Join(topo.Dir, "sidecar.log"),
		pidFile: filepath.Join(sockDir, "hsm-ha-proxy.pid"), exited: make(chan error, 1)}
	cfgPath := filepath.Join(topo.Dir, "sidecar.yaml")
	if err := topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
		NoRelays: true,
		ServerYAML: fmt.Sprintf("listen: unix://%s\npkcs11: unix://%s\npid_file: %s",
			filepath.Join(sockDir, "http.sock"), sc.socket, sc.pidFile),
		ClientsYAML: fmt.Sprintf("- {name: hsm-bench, unix_uid: %d, partitions: [%s]}", os.Getuid(), strconv.Quote(benchPartition.Name)),
	}); err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	logf, err := os.Create(sc.logPath)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	sc.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	sc.cmd.Stdout, sc.cmd.Stderr = logf, logf
	sc.cmd.Env = os.Environ()
	if profile != "" {
		sc.cmd.Env = append(sc.cmd.Env, "HSM_HA_PROXY_CPUPROFILE="+profile)
	}
	if err := sc.cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	go func() { sc.exited <- sc.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sc.socket); err == nil {
			c.Close()
			return sc, nil
		}
		select {
		case err := <-sc.exited:
			sc.exited <- err
			sc.stop(func(string, ...any) {})
			return nil, fmt.Errorf("sidecar exited before serving (%v): %s", err, logTail(sc.logPath))
		case <-ctx.Done():
			sc.stop(func(string, ...any) {})
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			sc.stop(func(string, ...any) {})
			return nil, fmt.Errorf("sidecar not serving %s after 30s: %s", sc.socket, logTail(sc.logPath))
		}
	}
}

// cpu is the sidecar's CPU time so far, its device workers' included.
func (sc *sidecar) cpu() time.Duration {
	return processCPU(sc.cmd.Process.Pid) + childrenCPU(sc.cmd.Process.Pid)
}

// stop ends the sidecar with SIGTERM (so that its CPU profile is written), SIGKILL after 15 s: the process
// that serves after hot upgrades, and the first one.
func (sc *sidecar) stop(progress func(string, ...any)) {
	defer os.RemoveAll(sc.sockDir)
	if pid, err := readPID(sc.pidFile); err == nil && pid != sc.cmd.Process.Pid && !processGone(pid) {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for deadline := time.Now().Add(15 * time.Second); !processGone(pid); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				progress("  sidecar %d killed after 15 s: %s", pid, logTail(sc.logPath))
				break
			}
		}
	}
	_ = sc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-sc.exited:
		if err != nil {
			progress("  sidecar exited: %v", err)
		}
	case <-time.After(15 * time.Second):
		_ = sc.cmd.Process.Kill()
		<-sc.exited
		progress("  sidecar killed after 15 s: %s", logTail(sc.logPath))
	}
}

// logTail is the end of a log file, for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return strings.TrimSpace(string(b))
}
