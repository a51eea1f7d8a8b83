package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// UpgradeRun is the upgrade section: a client signing through the PKCS#11 front end while the sidecar is
// upgraded in place (SIGUSR2), again and again.
type UpgradeRun struct {
	Goroutines int
	Handovers  []Handover
	Calls      int64 // every call of the run, failures included
	Failed     int64
	// FailedDuring is how many of the failed calls overlapped a handover.
	FailedDuring int64
	FirstErr     string
	// During is the latency of every call that overlapped a handover (from the signal to the old process
	// gone); Outside the others'.
	During, Outside Latencies
	Load            loadRange
}

// Handover is one upgrade as timed from here.
type Handover struct {
	Serving time.Duration // from SIGUSR2 to the new process's pid in server.pid_file
	OldGone time.Duration // from SIGUSR2 to the old process gone
	// Connections is the old process's own measure (handover_ms in its log): every connection stopped,
	// passed and served again; 0 when its log line was not found.
	Connections time.Duration

	from, to int64 // the window, Unix nanoseconds
}

// upgradeSlice is the client's traced slice around one upgrade, which starts upgradeLead into it.
const (
	upgradeSlice = 10 * time.Second
	upgradeLead  = time.Second
)

// upgrades runs the sidecar on the local pair with a Go client (miekg/pkcs11 through the stock
// p11-kit-client.so, a child process, o.Goroutines' largest count of sessions) signing through the front end,
// and upgrades the sidecar o.Upgrades times, one per traced slice of the client.
func upgrades(ctx context.Context, o Options, dir, self string, progress func(string, ...any)) (*UpgradeRun, error) {
	topo, err := softhsmtest.Start(ctx, softhsmtest.Options{
		Dir:        dir,
		Devices:    []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}},
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
	sc, err := startSidecar(ctx, topo, bin, "")
	if err != nil {
		return nil, err
	}
	defer sc.stop(progress)
	pub, err := pubDER(topo.Keys[ecKey.Label])
	if err != nil {
		return nil, err
	}
	g := slices.Max(o.Goroutines)
	c, err := startChild(ctx, self, Spec{Contender: Direct, Alg: ECP256, Goroutines: g, Warmup: o.Warmup,
		Module: tools.P11KitClient, TokenLabel: benchPartition.Name, PIN: frontPIN,
		ModuleEnv: map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=" + sc.socket},
		KeyLabel:  ecKey.Label, KeyID: ecKey.ID, PubDER: pub})
	if err != nil {
		return nil, err
	}
	defer c.kill()
	run := &UpgradeRun{Goroutines: g}
	run.Load.add(loadAvg())
	var calls []Call
	for i := range o.Upgrades {
		type traced struct {
			sl  Slice
			err error
		}
		res := make(chan traced, 1)
		go func() {
			sl, err := c.measure("trace", upgradeSlice)
			res <- traced{sl, err}
		}()
		time.Sleep(upgradeLead)
		h, herr := sc.upgrade(ctx, upgradeSlice-upgradeLead)
		r := <-res
		if err := errors.Join(herr, r.err); err != nil {
			return nil, fmt.Errorf("upgrade %d: %w", i+1, err)
		}
		run.Handovers = append(run.Handovers, h)
		calls = append(calls, r.sl.Calls...)
		run.Failed += r.sl.Errors
		if run.FirstErr == "" {
			run.FirstErr = r.sl.FirstErr
		}
		progress("  upgrade %d: new process serving after %s, old one gone after %s (its handover %s); %d calls, %d failed",
			i+1, fmtDur(h.Serving), fmtDur(h.OldGone), fmtDur(h.Connections), len(r.sl.Calls), r.sl.Errors)
	}
	run.Load.add(loadAvg())
	run.Calls = int64(len(calls))
	run.During, run.Outside, run.FailedDuring = splitCalls(calls, run.Handovers)
	return run, nil
}

// splitCalls sorts the successful calls' latencies into those that overlapped a handover's window and
// the others, and counts the failed calls that overlapped one.
func splitCalls(calls []Call, hs []Handover) (during, outside Latencies, failedDuring int64) {
	for _, c := range calls {
		end := c.Start + c.Nanos
		in := false
		for _, h := range hs {
			if c.Start <= h.to && end >= h.from {
				in = true
				break
			}
		}
		if c.Failed {
			if in {
				failedDuring++
			}
			continue
		}
		if in {
			during = append(during, c.Nanos)
		} else {
			outside = append(outside, c.Nanos)
		}
	}
	return during, outside, failedDuring
}

// upgrade sends SIGUSR2 to the serving process and waits, at most limit, until a new one serves (its pid
// in server.pid_file) and the old one is gone.
func (sc *sidecar) upgrade(ctx context.Context, limit time.Duration) (Handover, error) {
	old, err := readPID(sc.pidFile)
	if err != nil {
		return Handover{}, err
	}
	logBefore := fileSize(sc.logPath)
	began := time.Now()
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		return Handover{}, err
	}
	var h Handover
	for {
		if h.Serving == 0 {
			if pid, err := readPID(sc.pidFile); err == nil && pid != old {
				h.Serving = time.Since(began)
			}
		}
		if h.Serving != 0 && processGone(old) {
			h.OldGone = time.Since(began)
			break
		}
		if time.Since(began) > limit {
			return h, fmt.Errorf("no new process serving, or the old one (%d) not gone, after %v: %s", old, limit, logTail(sc.logPath))
		}
		select {
		case <-ctx.Done():
			return h, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	h.from, h.to = began.UnixNano(), time.Now().UnixNano()
	h.Connections = handoverTime(sc.logPath, logBefore)
	return h, nil
}

// handoverRE finds the old process's handover_ms in its log (JSON or text).
var handoverRE = regexp.MustCompile(`handover_ms"?[:=]([0-9.]+)`)

// handoverTime is the last handover_ms logged after offset in the sidecar's log (0 if none).
func handoverTime(path string, offset int64) time.Duration {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return 0
	}
	m := handoverRE.FindAllSubmatch(b[offset:], -1)
	if len(m) == 0 {
		return 0
	}
	ms, err := strconv.ParseFloat(string(m[len(m)-1][1]), 64)
	if err != nil {
		return 0
	}
	return time.Duration(ms * float64(time.Millisecond))
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readPID reads a pid file.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a pid", path)
	}
	return pid, nil
}

// processGone tells whether a process has exited (gone, or a zombie not reaped yet).
func processGone(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}
