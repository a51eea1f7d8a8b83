package devicebackend

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// workerDevice is the backend of policy.isolation "process" (docs/ARCHITECTURE.md, "Process model"): the
// device's PKCS#11 module runs in a worker process of its own, and this process loads none. Deadlines are
// this side's: a call returns at its context's end whatever the worker does. A worker that dies, that
// leaves a call unanswered for policy.reinit_grace past its deadline, or whose stuck calls exceed
// policy.max_stuck_calls is killed and started again with backoff; the device is down meanwhile.
type workerDevice struct {
	idx  int
	name string
	s    *Settings
	cmd  []string // the worker command: path and arguments
	log  *slog.Logger
	h    hooks
	m    WorkerMetrics

	// proc is the running worker (nil: none), read without a lock on the call path; startMu serialises
	// starts and guards backoff, nextTry and closed, so a start in progress never blocks a call.
	proc    atomic.Pointer[workerProc]
	startMu sync.Mutex
	backoff time.Duration
	nextTry time.Time // no start before this (backoff after a failure)
	closed  bool

	// The device as the worker last described it.
	state    atomic.Pointer[workerState]
	keysMu   sync.RWMutex
	keyCache []map[string]*KeyObject // per partition; nil: not open
	secrets  []map[string]*SecretObject
	keysGen  uint64
	lastErr  atomic.Pointer[LastError] // this side's verdicts (worker exits, bad signatures)
	restarts atomic.Int64
	exit     atomic.Pointer[string]
	pins     []atomic.Pointer[string] // reloaded PINs, sent to every new worker
}

// Worker restart backoff: doubling from the first to the last, with the probes as the clock.
const (
	workerBackoffMin = 200 * time.Millisecond
	workerBackoffMax = 30 * time.Second
)

func NewWorkerDevice(s *Settings, i int, log *slog.Logger, m WorkerMetrics) *workerDevice {
	w := &workerDevice{idx: i, name: s.Devices[i].Name, s: s, cmd: s.WorkerCmd, log: log, m: m,
		pins: make([]atomic.Pointer[string], len(s.Partitions))}
	w.state.Store(&workerState{Parts: make([]PartInfo, len(s.Partitions))})
	w.keyCache = make([]map[string]*KeyObject, len(s.Partitions))
	return w
}

var _ Backend = (*workerDevice)(nil)

// current returns the running worker, starting one when none runs and the backoff allows; errors are
// device-down.
// Only opens and probes start workers (start): a call never waits for a process to start.
func (w *workerDevice) current(ctx context.Context, start bool) (*workerProc, error) {
	if p := w.proc.Load(); p != nil && !p.dead.Load() {
		return p, nil
	}
	if !start {
		return nil, errclass.DownErr(w.name, "", opWorker, "worker process not running")
	}
	w.startMu.Lock()
	defer w.startMu.Unlock()
	if w.closed {
		return nil, errclass.DownErr(w.name, "", opWorker, "cluster closed")
	}
	if p := w.proc.Load(); p != nil && !p.dead.Load() {
		return p, nil // started by another probe meanwhile
	}
	if wait := time.Until(w.nextTry); wait > 0 {
		return nil, errclass.DownErr(w.name, "", opWorker, fmt.Sprintf("worker process restarting in %v", wait.Round(time.Millisecond)))
	}
	p, err := startWorker(ctx, w)
	if err != nil {
		w.failedStart()
		err = errclass.DownErr(w.name, "", opWorker, err.Error())
		w.NoteError(err)
		return nil, err
	}
	w.proc.Store(p)
	return p, nil
}

// failedStart pushes the next start back (caller holds w.startMu).
func (w *workerDevice) failedStart() {
	w.backoff = min(max(2*w.backoff, workerBackoffMin), workerBackoffMax)
	w.nextTry = time.Now().Add(w.backoff)
}

// exited is called once per worker when it ends: pending calls fail, the device goes down, and the next
// start waits for the backoff (reset once a worker serves a probe).
func (w *workerDevice) exited(p *workerProc, why, status string) {
	w.startMu.Lock()
	if w.proc.CompareAndSwap(p, nil) {
		w.failedStart()
	}
	closed := w.closed
	w.startMu.Unlock()
	if closed {
		return
	}
	w.restarts.Add(1)
	w.exit.Store(&why)
	err := errclass.DownErr(w.name, "", opWorker, "worker process "+why)
	w.NoteError(err)
	w.m.WorkerExit(w.name, status)
	w.log.Warn("device worker ended; it is started again by the next probe", "device", w.name, "pid", p.pid, "how", why)
	w.h.onDown(err.Error())
}

func (w *workerDevice) Open(ctx context.Context) error { return w.probeOrOpen(ctx, msgOpen, false) }

func (w *workerDevice) Probe(ctx context.Context, othersServing bool) error {
	return w.probeOrOpen(ctx, msgProbe, othersServing)
}

// probeOrOpen asks the worker (started if need be) to open or probe its device, and caches what it says.
func (w *workerDevice) probeOrOpen(ctx context.Context, typ byte, others bool) error {
	p, err := w.current(ctx, true)
	if err != nil {
		return err
	}
	w.keysMu.RLock()
	have := w.keysGen
	w.keysMu.RUnlock()
	if p.fresh.Load() {
		have = ^uint64(0) // a new worker's keys are new whatever its generation says
	}
	// One probe at a time, as in process, where a probe blocked in the module keeps the next from starting:
	// the caller gives up at its deadline but the worker still runs the probe (a recovery, or a new worker's
	// open, finishes on its own), and probes sent meanwhile would queue behind it and pile up.
	if id := p.probeID.Load(); id != 0 && p.isPending(id) {
		return errclass.DownErr(w.name, "", opWorker, "the worker is still running the previous probe")
	}
	// The worker has until the caller's deadline, or init_timeout without one (the health monitor's probes),
	// and the hang watch holds it to that same deadline, not to operation_timeout: a slow open is no hang.
	deadline := deadlineOr(ctx, w.s.Own.InitTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	id, pc, err := p.send(ctx, typ, marshal(&workerProbe{OthersServing: others, Timeout: time.Until(deadline), HaveKeys: have}))
	if err != nil {
		return err
	}
	p.probeID.Store(id)
	b, err := p.wait(ctx, pc)
	if err != nil {
		return err
	}
	var st workerState
	if err := json.Unmarshal(b, &st); err != nil {
		return errclass.DownErr(w.name, "", opWorker, "worker protocol: "+err.Error())
	}
	w.state.Store(&st)
	if st.Keys != nil {
		p.fresh.Store(false)
		w.setKeys(st.KeysGen, st.Keys, st.Secrets)
	}
	if st.Err != nil {
		return st.Err.err()
	}
	w.startMu.Lock()
	w.backoff = 0
	w.startMu.Unlock()
	p.checkStuck(w, st.Counts.Stuck)
	return nil
}

// setKeys replaces the cached keys and tells the cluster.
func (w *workerDevice) setKeys(gen uint64, parts [][]wireKey, secretParts [][]wireSecret) {
	keys := make([]map[string]*KeyObject, len(w.s.Partitions))
	for pi := range keys {
		if pi >= len(parts) || parts[pi] == nil {
			continue
		}
		keys[pi] = make(map[string]*KeyObject, len(parts[pi]))
		for _, wk := range parts[pi] {
			pub, err := x509.ParsePKIXPublicKey(wk.PubDER)
			if err != nil {
				w.log.Warn("worker sent a public key that does not parse; key ignored", "device", w.name, "key", wk.Label, "err", err)
				continue
			}
			keys[pi][wk.Label] = &KeyObject{Label: wk.Label, ID: wk.ID, Pub: pub, PubDER: wk.PubDER, Alg: wk.Alg,
				Cert: wk.Cert, CertIgnored: wk.CertIgnored}
		}
	}
	secrets := w.cacheSecrets(secretParts)
	w.keysMu.Lock()
	w.keyCache, w.secrets, w.keysGen = keys, secrets, gen
	w.keysMu.Unlock()
	w.h.onKeys()
}

func (w *workerDevice) Run(ctx context.Context, pi int, op *Op) ([]byte, error) {
	p, err := w.current(ctx, false)
	if err != nil {
		return nil, err
	}
	return p.call(ctx, msgRun, encodeRun(pi, time.Until(deadlineOr(ctx, w.s.Own.OperationTimeout)), op))
}

func (w *workerDevice) Keys(pi int) map[string]*KeyObject {
	w.keysMu.RLock()
	defer w.keysMu.RUnlock()
	return w.keyCache[pi]
}

func (w *workerDevice) SecretKeys(pi int) map[string]*SecretObject {
	w.keysMu.RLock()
	defer w.keysMu.RUnlock()
	if pi >= len(w.secrets) {
		return nil
	}
	return w.secrets[pi]
}

// cacheSecrets turns the worker's secret keys into this side's catalogue entries (no handles).
func (w *workerDevice) cacheSecrets(parts [][]wireSecret) []map[string]*SecretObject {
	out := make([]map[string]*SecretObject, len(w.pins)) // one per partition
	for pi := range out {
		if pi >= len(parts) || parts[pi] == nil {
			continue
		}
		out[pi] = make(map[string]*SecretObject, len(parts[pi]))
		for _, ws := range parts[pi] {
			alg, h, ok := secretAlg(ws.KeyType, ws.Size)
			if !ok {
				continue
			}
			out[pi][ws.Label] = &SecretObject{Label: ws.Label, ID: ws.ID, KeyType: ws.KeyType, Size: ws.Size, Alg: alg, Hash: h, KCV: ws.KCV}
		}
	}
	return out
}

func (w *workerDevice) Partition(pi int) PartInfo {
	st := w.state.Load()
	if pi < len(st.Parts) {
		return st.Parts[pi]
	}
	return PartInfo{}
}

func (w *workerDevice) UsePIN(pi int, pin string) bool {
	w.pins[pi].Store(&pin)
	p, err := w.current(context.Background(), false)
	if err != nil {
		return false // the next worker starts with the new PIN, and opens the partition
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.s.Own.InitTimeout)
	defer cancel()
	b, err := p.call(ctx, msgPIN, marshal(&workerPIN{Partition: pi, PIN: pin}))
	var retry bool
	return err == nil && json.Unmarshal(b, &retry) == nil && retry
}

func (w *workerDevice) Counts() Counts {
	st := w.state.Load()
	c := Counts{Reinits: st.Counts.Reinits, Retired: st.Counts.Retired, Stuck: st.Counts.Stuck,
		CapRefusal: st.Counts.CapRefusal, WorkerRestarts: w.restarts.Load(),
		Lanes: st.Counts.Lanes, LanesOpen: st.Counts.LanesOpen}
	if st.Counts.LastErr != "" {
		c.LastErr = &LastError{Msg: st.Counts.LastErr, Class: st.Counts.LastErrClass}
	}
	if e := w.lastErr.Load(); e != nil {
		c.LastErr = e // this side's verdict is the newer one
	}
	if e := w.exit.Load(); e != nil {
		c.WorkerExit = *e
	}
	if p := w.proc.Load(); p != nil {
		c.WorkerPID = p.pid
	}
	return c
}

// Shares: each worker loads its own module instance, so no two devices share one.
func (w *workerDevice) Shares(Backend) bool { return false }

func (w *workerDevice) SetHooks(keysChanged func(), down func(string)) { w.h.set(keysChanged, down) }

func (w *workerDevice) NoteError(err error) {
	if err != nil {
		w.lastErr.Store(&LastError{Msg: err.Error(), Class: errclass.ClassOf(err)})
	}
}

func (w *workerDevice) Close(timeout time.Duration) {
	w.startMu.Lock() // after a start in progress: its worker is stopped here too
	w.closed = true
	p := w.proc.Swap(nil)
	w.startMu.Unlock()
	if p != nil {
		p.stop(timeout)
	}
}

// deadlineOr is ctx's deadline, or now+d when it has none.
func deadlineOr(ctx context.Context, d time.Duration) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(d)
}

// opWorker names the worker process in errors (DeviceError.Op).
const opWorker = "worker"

// workerProc is one running worker process.
type workerProc struct {
	w     *workerDevice
	pid   int
	cmd   *exec.Cmd
	conn  net.Conn
	rd    *bufio.Reader
	fw    *frameWriter
	dead  atomic.Bool
	fresh atomic.Bool // no key listing received yet
	// probeID is the last open or probe sent (0: none), for one probe at a time.
	probeID atomic.Uint32
	done    chan struct{}
	why     string // how it ended; set before done closes

	pmu     sync.Mutex
	nextID  uint32
	pending map[uint32]*pendingCall
}

// pendingCall is a request waiting for its reply. deadline is when the caller gave up, for the hang watch.
type pendingCall struct {
	ch       chan frame
	deadline time.Time
}

// startWorker starts a worker for w and sends it its init message. Caller holds w.startMu.
func startWorker(ctx context.Context, w *workerDevice) (*workerProc, error) {
	if len(w.cmd) == 0 {
		return nil, errors.New("no worker command (policy.isolation process needs the program to call pkcs11ha.MaybeRunWorker)")
	}
	if os.Getenv(workerEnv) != "" {
		// A program that forgot MaybeRunWorker would run its own main as the worker, which would start
		// workers in turn: refuse instead of multiplying processes.
		return nil, errors.New("a device worker cannot start workers: the worker command's main must call pkcs11ha.MaybeRunWorker first")
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("worker socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "worker"), os.NewFile(uintptr(fds[1]), "worker-child")
	cmd := exec.Command(w.cmd[0], w.cmd[1:]...)
	if len(w.cmd) == 1 {
		// The process list names the program and the device (the worker itself reads neither).
		cmd.Args = []string{os.Args[0], "device-worker", w.name}
	}
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	cmd.ExtraFiles = []*os.File{theirs}
	// Its own process group: a signal meant for the sidecar (Ctrl-C in a terminal) is not the worker's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A pipe of our own, not StderrPipe: Wait closes that one as soon as the process exits, cutting off
	// the end of a crash's trace; ours is read to its end, whoever exits first.
	stderr, errW, err := os.Pipe()
	if err != nil {
		mine.Close()
		theirs.Close()
		return nil, err
	}
	cmd.Stderr = errW
	err = cmd.Start()
	errW.Close()
	theirs.Close()
	if err != nil {
		mine.Close()
		stderr.Close()
		return nil, fmt.Errorf("starting worker %s: %w", w.cmd[0], err)
	}
	// Through the runtime's poller, not a blocking read holding a thread; buffered, so that a frame's
	// header and body are one read.
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		stderr.Close()
		return nil, fmt.Errorf("worker socket: %w", err)
	}
	p := &workerProc{w: w, pid: cmd.Process.Pid, cmd: cmd, conn: conn, rd: bufio.NewReaderSize(conn, 64<<10), fw: &frameWriter{w: conn},
		done: make(chan struct{}), pending: map[uint32]*pendingCall{}}
	p.fresh.Store(true)
	go p.logStderr(stderr)
	go p.readLoop()
	go p.watch()
	if err := p.init(ctx); err != nil {
		p.kill("did not start: " + err.Error())
		return nil, err
	}
	w.m.WorkerStart(w.name)
	w.log.Info("device worker started", "device", w.name, "pid", p.pid)
	return p, nil
}

// init sends the worker its device, partitions, PINs and options.
func (p *workerProc) init(ctx context.Context) error {
	w := p.w
	in := workerInit{Protocol: workerProtocol, Device: w.s.Devices[w.idx], Own: w.s.Own, LogLevel: int(workerLogLevel(w.log))}
	in.Partitions = w.s.Partitions
	for pi := range w.s.Partitions {
		pin := w.s.PINs[pi]
		if np := w.pins[pi].Load(); np != nil {
			pin = *np
		}
		in.PINs = append(in.PINs, pin)
	}
	ictx, cancel := context.WithTimeout(ctx, w.s.Own.InitTimeout)
	defer cancel()
	_, err := p.call(ictx, msgInit, marshal(&in))
	return err
}

// workerLogLevel is the lowest level l logs, so the worker logs no more than the parent keeps.
func workerLogLevel(l *slog.Logger) slog.Level {
	for _, lv := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if l.Enabled(context.Background(), lv) {
			return lv
		}
	}
	return slog.LevelError
}

// call sends one request and waits for its reply until ctx ends or the worker dies.
func (p *workerProc) call(ctx context.Context, typ byte, payload []byte) ([]byte, error) {
	_, pc, err := p.send(ctx, typ, payload)
	if err != nil {
		return nil, err
	}
	return p.wait(ctx, pc)
}

// send sends one request; its reply is awaited with wait.
func (p *workerProc) send(ctx context.Context, typ byte, payload []byte) (uint32, *pendingCall, error) {
	pc := &pendingCall{ch: make(chan frame, 1)}
	pc.deadline = deadlineOr(ctx, p.w.s.Own.OperationTimeout)
	p.pmu.Lock()
	if p.dead.Load() {
		p.pmu.Unlock()
		return 0, nil, p.deadErr()
	}
	p.nextID++
	if p.nextID == 0 {
		p.nextID = 1 // id 0 is the worker's events
	}
	id := p.nextID
	p.pending[id] = pc
	p.pmu.Unlock()
	if err := p.fw.write(id, typ, payload); err != nil {
		p.forget(id)
		p.kill("unreachable: " + err.Error())
		return 0, nil, p.deadErr()
	}
	return id, pc, nil
}

// wait waits for the reply to a request sent, until ctx ends or the worker dies.
func (p *workerProc) wait(ctx context.Context, pc *pendingCall) ([]byte, error) {
	select {
	case f := <-pc.ch:
		return replyPayload(f)
	case <-p.done:
		return nil, p.deadErr()
	case <-ctx.Done():
		// The call stays pending: the watch kills a worker that never answers it.
		return nil, ctx.Err()
	}
}

// replyPayload splits a reply into its payload or its error.
func replyPayload(f frame) ([]byte, error) {
	if len(f.payload) == 0 {
		return nil, errors.New("worker protocol: empty reply")
	}
	if f.payload[0] == replyOK {
		return f.payload[1:], nil
	}
	var we wireError
	if err := json.Unmarshal(f.payload[1:], &we); err != nil {
		return nil, fmt.Errorf("worker protocol: %w", err)
	}
	return nil, we.err()
}

func (p *workerProc) deadErr() error {
	<-p.done
	return errclass.DownErr(p.w.name, "", opWorker, "worker process "+p.why)
}

// isPending tells whether request id is still unanswered.
func (p *workerProc) isPending(id uint32) bool {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	_, ok := p.pending[id]
	return ok
}

func (p *workerProc) forget(id uint32) *pendingCall {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	pc := p.pending[id]
	delete(p.pending, id)
	return pc
}

// readLoop delivers replies and events until the worker's end of the socket closes.
func (p *workerProc) readLoop() {
	for {
		f, err := readFrame(p.rd)
		if err != nil {
			// Usually the process is exiting (a crash): let its exit status be the reason.
			select {
			case <-p.done:
			case <-time.After(time.Second):
				p.kill("killed: closed its connection")
			}
			return
		}
		if f.id == 0 && f.typ == msgEvent {
			var e workerEvent
			if json.Unmarshal(f.payload, &e) == nil && e.Down != "" {
				p.w.h.onDown(e.Down)
			}
			continue
		}
		if pc := p.forget(f.id); pc != nil {
			pc.ch <- f
		}
	}
}

// watch kills a worker that leaves a call unanswered for policy.reinit_grace past the call's deadline (a
// module hung for good holds every call sent to it), and reaps it.
func (p *workerProc) watch() {
	grace := p.w.s.Own.ReinitGrace
	t := time.NewTicker(min(grace/4, 250*time.Millisecond))
	defer t.Stop()
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			p.end(exitReason(err))
			return
		case <-t.C:
			if late := p.overdue(grace); late > 0 {
				p.kill(fmt.Sprintf("killed: %d calls unanswered for %v past their deadlines", late, grace))
			}
		}
	}
}

// overdue counts the calls whose deadline passed more than grace ago.
func (p *workerProc) overdue(grace time.Duration) int {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	n := 0
	now := time.Now()
	for _, pc := range p.pending {
		if now.Sub(pc.deadline) > grace {
			n++
		}
	}
	return n
}

// checkStuck recycles a worker whose calls stuck in retired module instances exceed policy.max_stuck_calls:
// killing it frees their threads (in process, the device would have to stay down instead).
func (p *workerProc) checkStuck(w *workerDevice, stuck int64) {
	if stuck > int64(w.s.Own.MaxStuckCalls) {
		p.kill(fmt.Sprintf("killed: %d calls stuck in retired module instances (policy.max_stuck_calls %d)", stuck, w.s.Own.MaxStuckCalls))
	}
}

// kill ends the worker (SIGKILL) with a reason; its exit is reported once by watch.
func (p *workerProc) kill(why string) {
	p.pmu.Lock()
	if p.why == "" {
		p.why = why
	}
	p.pmu.Unlock()
	_ = p.cmd.Process.Kill()
}

// end runs once the process has exited: every pending call fails now.
func (p *workerProc) end(status string) {
	p.pmu.Lock()
	if p.why == "" {
		p.why = "exited (" + status + ")"
	} else {
		p.why += " (" + status + ")"
	}
	p.dead.Store(true)
	p.pending = map[uint32]*pendingCall{}
	p.pmu.Unlock()
	_ = p.conn.Close()
	close(p.done)
	p.w.exited(p, p.why, status)
}

// stop asks the worker to close its device and exit, and kills it after timeout.
//
// Half the time goes to the orderly close, so that the kill and the reaping still fit in it: a worker's
// module dies with its process anyway (docs/ARCHITECTURE.md, "Process model").
func (p *workerProc) stop(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout/2)
	defer cancel()
	_, _ = p.call(ctx, msgClose, nil)
	select {
	case <-p.done:
	case <-ctx.Done():
		p.kill("killed: did not close in time")
		<-p.done
	}
}

// exitReason says how a process ended: "exit status 2", "signal: killed", "signal: segmentation fault".
func exitReason(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}

// logStderr re-logs the worker's JSON log lines (and anything else it prints, such as a Go panic or a
// module's own messages) under the device's name.
func (p *workerProc) logStderr(r *os.File) {
	defer r.Close()
	// Whatever stops the scanner (a line past its bound), the pipe is drained: a worker must never block
	// writing to a full stderr.
	defer func() { _, _ = io.Copy(io.Discard, r) }()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil && rec["msg"] != nil {
			lvl := slog.LevelInfo
			if s, ok := rec["level"].(string); ok {
				_ = lvl.UnmarshalText([]byte(s))
			}
			msg, _ := rec["msg"].(string)
			args := []any{"device", p.w.name, "worker_pid", p.pid}
			for k, v := range rec {
				if k != "msg" && k != "level" && k != "time" {
					args = append(args, k, v)
				}
			}
			p.w.log.Log(context.Background(), lvl, msg, args...)
			continue
		}
		p.w.log.Warn("device worker output", "device", p.w.name, "worker_pid", p.pid, "line", string(line))
	}
}

// Admin carries an admin operation to the worker, under ctx's deadline or policy.admin_timeout; the
// device's state in the reply refreshes the cache (its keys, when the operation changed them).
func (w *workerDevice) Admin(ctx context.Context, pi int, op *AdminOp) (*AdminResult, error) {
	p, err := w.current(ctx, false)
	if err != nil {
		return nil, err
	}
	dl := deadlineOr(ctx, w.s.Own.AdminTimeout)
	ctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	w.keysMu.RLock()
	have := w.keysGen
	w.keysMu.RUnlock()
	b, err := p.call(ctx, msgAdmin, marshal(&workerAdmin{Partition: pi, Timeout: time.Until(dl), HaveKeys: have, Op: op}))
	if err != nil {
		return nil, err
	}
	var rep workerAdminReply
	if err := json.Unmarshal(b, &rep); err != nil || rep.Result == nil {
		return nil, errclass.DownErr(w.name, "", opWorker, fmt.Sprintf("worker protocol: admin reply: %v", err))
	}
	if st := rep.State; st != nil {
		w.state.Store(st)
		if st.Keys != nil {
			w.setKeys(st.KeysGen, st.Keys, st.Secrets)
		}
	}
	return rep.Result, nil
}

// WorkerMetrics counts worker processes started and ended (the library's metrics implement it).
type WorkerMetrics interface {
	WorkerStart(device string)
	WorkerExit(device, status string)
}
