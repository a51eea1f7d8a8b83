package chaos

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// timing is the shape of a run: the short form (default) or the long one (CHAOS_LONG=1).
type timing struct {
	long                    bool
	baseline, fault, tail   time.Duration // healthy start, fault held, healthy end after recovery
	flapCycles              int           // kill + restart cycles of 2 s each
	resets                  int           // connection resets in "reset"
	workers                 int
	rate                    float64 // ops/s over all workers: leaves CPU headroom on a 2-core machine
	deadline, shortDeadline time.Duration
	shortEvery              int
}

// The short form is part of make test, a gate that must hold on a host loaded by anything: its callers wait
// 10 s, and its scenarios run with gateDeadlines (below). The long form runs the policies as written.
var shortTiming = timing{
	baseline: time.Second, fault: 2 * time.Second, tail: 1500 * time.Millisecond, flapCycles: 3, resets: 1,
	workers: 8, rate: 400, deadline: 10 * time.Second, shortDeadline: 20 * time.Millisecond, shortEvery: 50,
}

var longTiming = timing{
	long: true, baseline: 4 * time.Second, fault: 12 * time.Second, tail: 8 * time.Second, flapCycles: 75, resets: 3,
	workers: 8, rate: 400, deadline: 2 * time.Second, shortDeadline: 20 * time.Millisecond, shortEvery: 50,
}

// gateDeadlines are the short form's attempt and probe deadlines: none that a healthy device misses on a
// loaded host (a 2-core machine shared with other builds stalls this process for hundreds of ms), so that
// whether a call fails, and which device serves it, is decided by the injected fault alone. A hung device
// is still left at its attempt deadline, and the caller still gets its answer (10 s; four attempts at
// most). The long form (make chaos) runs the default deadlines and asserts their timing bounds.
func gateDeadlines(p *pkcs11ha.Policy) {
	p.AttemptTimeout = pkcs11ha.TierDurations{Local: pkcs11ha.Duration(time.Second), DR: pkcs11ha.Duration(2 * time.Second)}
	p.Health.Timeout = pkcs11ha.Duration(3 * time.Second)
}

// policy is the pkcs11ha policy section a scenario runs with.
type policy struct{ name, yaml string }

var (
	defaultPolicy = policy{name: "default"}
	// fastPolicy makes recovery take seconds instead of tens of seconds: probes every 500 ms (200 ms while
	// down), breakers open 1 s at first, at most 4 s. Everything else (attempt deadlines 50/250 ms,
	// EWMA decay 10 s, thresholds) is the default.
	fastPolicy = policy{name: "fast", yaml: "health: {interval: 500ms, down_interval: 200ms}\nbreaker: {open_base: 1s, open_max: 4s}"}
)

// deadlineSlack is how late past its own deadline a call may return in the long form (timer and scheduling
// latency on a loaded 2-core machine): anything later means a caller was held by a device. The short form
// (make test, a deterministic gate) only detects hangs: a device hung under a call would hold it for the
// fault's duration, seconds; hangSlack is far past any scheduling delay. That a caller leaves at its
// deadline while the device still holds the call is proven with held fakes in failover's unit tests.
const (
	deadlineSlack = 150 * time.Millisecond
	hangSlack     = time.Second
)

// livenessWait is how long the short form waits past a recovery bound before it calls the recovery missing:
// past it the device is not slow to come back but does not come back.
const livenessWait = 30 * time.Second

// bound checks a timing bound. The long form (make chaos) fails the scenario past it. The short form (make
// test, which must not depend on the host's load) reports it: the measurement is in the log and the
// results table, and the functional invariant next to it (the call was served, the device came back) is
// still asserted. docs/chaos.md lists which bounds are which.
func (e *env) bound(ok bool, format string, args ...any) {
	e.t.Helper()
	if ok {
		return
	}
	if e.tm.long {
		e.t.Errorf(format, args...)
		return
	}
	e.missed++
	e.logf("BOUND missed (reported; make chaos asserts it): "+format, args...)
}

// waitLimit is how long to wait for a recovery before calling it missing: a while past the bound in the long
// form (to report how late it was), livenessWait past it in the short form.
func (e *env) waitLimit() time.Duration {
	if e.tm.long {
		return e.recBound + min(e.recBound, 20*time.Second)
	}
	return e.recBound + livenessWait
}

// scenario is one fault script with its bounds.
type scenario struct {
	name    string
	policy  policy
	devices func() []softhsmtest.DeviceSpec // nil: softhsmtest default topology
	p99     time.Duration                   // bound on the p99 latency of every call of the run
	// recovery is the bound on the recovery time for the effective policy (nil: nothing to recover).
	recovery func(p *pkcs11ha.Policy, tm timing) time.Duration
	// singleDevice: only one local device is hit, the other stays healthy all along, so no call may go to DR
	// at any time, not only in healthy phases.
	singleDevice bool
	// beforeOpen, if set, runs before the cluster is opened and undo (its result, if any) right after.
	beforeOpen func(e *env) (undo func())
	run        func(e *env)                      // the fault script, run while the load runs
	check      func(e *env, ops []Op, s Summary) // extra assertions, after the load stopped
}

// env is one scenario's world.
type env struct {
	t    *testing.T
	sc   scenario
	tm   timing
	ctx  context.Context // bounds harness calls (restarts)
	topo *softhsmtest.Topology
	cfg  *pkcs11ha.Config
	cl   *pkcs11ha.Cluster
	reg  *prometheus.Registry
	rec  *Recorder
	load *Load
	keys []string // per task: "partition/label"
	logs *logBuffer
	samp *sampler
	stal *stallDetector

	victims            []string
	faultAt, removedAt time.Duration
	removedIdx         int
	recBound           time.Duration
	recovery           time.Duration
	recoveryNote       string
	rotation           time.Duration // fault removed -> the device takes its share of the local calls again
	rotationNote       string
	faulted            map[string]time.Duration // device -> when a fault first hit it
	// Failures with ErrNoDevice are allowed for calls in flight at some point of [allowFrom, allowTo)
	// (all-down only).
	allowFrom, allowTo time.Duration
	missed             int // timing bounds missed in the short form (reported, see bound)
}

func (e *env) dev(name string) *softhsmtest.Device {
	d := e.topo.Device(name)
	if d == nil {
		e.t.Fatalf("no device %s", name)
	}
	return d
}

func (e *env) hold(d time.Duration) { time.Sleep(d) }

// inject starts a fault phase: fn injects the fault; the fault counts from just before fn.
func (e *env) inject(phase string, healthy bool, victims []string, fn func() error) {
	e.t.Helper()
	e.victims = victims
	e.faultAt = e.rec.Phase(phase, healthy)
	for _, v := range victims {
		if _, ok := e.faulted[v]; !ok {
			e.faulted[v] = e.faultAt
		}
	}
	e.rec.Mark(faultMark + phase)
	if err := fn(); err != nil {
		e.t.Fatalf("injecting %s: %v", phase, err)
	}
	e.logf("fault injected: %s (%v)", phase, e.rec.Now()-e.faultAt)
}

// remove ends the fault: fn removes it; recovery counts from fn's return ("restart returned"). The phase
// that starts then is not healthy (the fault's victims are recovering) unless the script says otherwise.
func (e *env) remove(phase string, fn func() error) { e.t.Helper(); e.removeAs(phase, false, fn) }

func (e *env) removeAs(phase string, healthy bool, fn func() error) {
	e.t.Helper()
	start := e.rec.Now()
	if err := fn(); err != nil {
		e.t.Fatalf("removing the fault (%s): %v", phase, err)
	}
	e.removedIdx = e.rec.Len()
	e.removedAt = e.rec.Phase(phase, healthy)
	e.rec.Mark(removedMark + phase)
	e.logf("fault removed: %s (took %v)", phase, e.removedAt-start)
}

// waitRecovered waits until a call started after the fault was removed satisfies pred, and records the
// recovery time (fault removed -> that call returned). It fails the scenario past the bound, but keeps
// waiting a while longer to report how long recovery really took.
func (e *env) waitRecovered(what string, pred func(*Op) bool) bool {
	e.t.Helper()
	limit := e.waitLimit()
	ctx, cancel := context.WithTimeout(context.Background(), limit-(e.rec.Now()-e.removedAt))
	defer cancel()
	from := e.removedAt
	op, ok := e.rec.WaitFor(ctx, e.removedIdx, func(o *Op) bool { return o.Start >= from && pred(o) })
	if !ok {
		e.recovery, e.recoveryNote = -1, "> "+ms(limit)
		e.t.Errorf("recovery: %s did not happen within %v of the fault's removal (bound %v)\n%s", what, limit, e.recBound, e.statusTable())
		return false
	}
	e.setRecovery(what, op.End()-from)
	return true
}

func (e *env) setRecovery(what string, d time.Duration) {
	e.t.Helper()
	e.recovery = d
	e.logf("recovered: %s %v after the fault was removed", what, d.Round(time.Millisecond))
	e.bound(d <= e.recBound, "recovery: %s took %v, bound %v\n%s", what, d.Round(time.Millisecond), e.recBound, e.statusTable())
}

func (e *env) healthy(phase string) { e.rec.Phase(phase, true) }

func (e *env) logf(format string, args ...any) {
	e.t.Logf("[%7.3fs] "+format, append([]any{e.rec.Now().Seconds()}, args...)...)
}

func servedBy(devices ...string) func(*Op) bool {
	return func(o *Op) bool { return o.Served() && slices.Contains(devices, o.Device) }
}

func (e *env) isDR(device string) bool {
	for _, d := range e.cfg.Devices {
		if d.Name == device {
			return d.Region != e.cfg.LocalRegion
		}
	}
	return false
}

func (e *env) localDevices() []string {
	var out []string
	for _, d := range e.cfg.Devices {
		if d.Region == e.cfg.LocalRegion {
			out = append(out, d.Name)
		}
	}
	return out
}

// newRow is the results-table row of a scenario that has not run yet.
func newRow(sc scenario) *row {
	return &row{name: sc.name, policy: sc.policy.name, failover: -1, recovery: -1, recBound: -1, rotation: -1}
}

// runScenario runs one scenario, fills its row of the results table (r.passed is set by the caller once
// every cleanup, the goroutine check included, has run) and draws its timeline picture into pictures.
func runScenario(t *testing.T, sc scenario, tm timing, r *row, pictures string) {
	// Registered first, so it runs last: after the load, the faults, the cluster and the topology are gone,
	// no goroutine of this scenario may be left (see leaks_test.go for the one documented exception).
	ignore := goleak.IgnoreCurrent()
	blockedBefore, _ := leakcheck.CgoBlocked()
	var stuck int
	t.Cleanup(func() {
		if err := leakcheck.Verify(blockedBefore+stuck, ignore); err != nil {
			t.Errorf("INVARIANT goroutine leak: %v", err)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	opts := softhsmtest.Options{}
	if sc.devices != nil {
		opts.Devices = sc.devices()
	}
	topo := harnesstest.Start(t, opts)
	e := &env{t: t, sc: sc, tm: tm, ctx: ctx, topo: topo, reg: prometheus.NewRegistry(), logs: newLogBuffer(4000),
		faultAt: -1, removedAt: -1, recovery: -1, rotation: -1, allowFrom: -1, allowTo: -1, faulted: map[string]time.Duration{}}

	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	if err := topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: sc.policy.yaml}); err != nil {
		t.Fatal(err)
	}
	cfg, err := pkcs11ha.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.long {
		gateDeadlines(&cfg.Policy)
	}
	e.cfg = cfg
	r.p99Bound = sc.p99
	var undo func()
	if sc.beforeOpen != nil {
		undo = sc.beforeOpen(e)
	}
	octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
	cl, err := pkcs11ha.Open(octx, cfg, pkcs11ha.WithLogger(slog.New(slog.NewTextHandler(e.logs, nil))), pkcs11ha.WithRegisterer(e.reg))
	ocancel()
	if undo != nil {
		undo()
	}
	if err != nil {
		t.Fatal(err)
	}
	e.cl = cl
	e.cfg = cl.Config() // the policy in effect, defaults included
	if sc.recovery != nil {
		e.recBound = sc.recovery(&e.cfg.Policy, tm)
		r.recBound = e.recBound
	}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Errorf("Cluster.Close: %v", err)
		}
	})
	// Before Close: how many calls the library abandoned on module instances it retired (the p11-kit bug).
	t.Cleanup(func() {
		stuck = e.settleAbandoned()
		leakcheck.Allow(stuck)
	})
	// Runs first: calls stuck in cgo on a paused or hung device are released.
	t.Cleanup(func() { releaseFaults(t, topo) })
	for _, st := range cl.Status() {
		if st.State == "down" {
			t.Fatalf("device %s is down after Open: %s", st.Name, st.Reason)
		}
	}

	e.rec = NewRecorder("baseline", true)
	tasks := e.tasks()
	e.load = &Load{Workers: tm.workers, Tasks: tasks, Deadline: tm.deadline, ShortEvery: tm.shortEvery,
		ShortDeadline: tm.shortDeadline, Rate: tm.rate}
	e.samp = startSampler(e, 50*time.Millisecond)
	e.stal = startStallDetector(e.rec.Origin())
	stop := e.load.Start(e.rec)
	var stopOnce sync.Once
	stopAll := func() {
		stopOnce.Do(func() {
			stop()
			e.samp.stop()
			e.stal.stop()
		})
	}
	t.Cleanup(func() { e.writeTimeline(pictures) }) // after stopAll (cleanups run last-in first-out)
	t.Cleanup(stopAll)                              // also when the script fails half-way
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("library log (last lines):\n%s", e.logs.tail(80))
		}
	})

	e.logf("policy %s, %d workers at %.0f ops/s; baseline", sc.policy.name, tm.workers, tm.rate)
	e.hold(tm.baseline)
	sc.run(e)
	stopAll()

	ops := e.rec.Ops()
	s := Summarize(ops, e.rec.Phases(), e.isDR)
	e.check(ops, s, r)
	if sc.check != nil {
		sc.check(e, ops, s)
	}
	if e.missed > 0 {
		r.note = strings.TrimSpace(fmt.Sprintf("%s (%d timing bounds missed, reported)", r.note, e.missed))
	}
	e.report(ops, s)
}

// libKey is a *pkcs11ha.Key as the load generator uses it: each call names the device that served it
// (the Outcome of WithOutcome).
type libKey struct{ *pkcs11ha.Key }

func (k libKey) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	sig, err := k.SignContext(pkcs11ha.WithOutcome(ctx, &out), digest, opts)
	return sig, out.Device, err
}

func (k libKey) DecryptDevice(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	pt, err := k.DecryptContext(pkcs11ha.WithOutcome(ctx, &out), ciphertext, opts)
	return pt, out.Device, err
}

// tasks is the load mix: mixed RSA and ECDSA signs and OAEP decrypts on partition payments, and ECDSA signs
// on partition ledger. Results are verified with the keys the harness imported, not with the public keys
// the cluster reports.
func (e *env) tasks() []Task {
	t := e.t
	key := func(part, label string) libKey {
		k, err := e.cl.Key(context.Background(), part, label)
		if err != nil {
			t.Fatalf("Key(%s, %s): %v", part, label, err)
		}
		want := e.topo.Keys[label].Public()
		if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(want) {
			t.Errorf("INVARIANT key %s/%s: the cluster's reference public key is not the key the devices were cloned with (info %+v)", part, label, k.Info())
		}
		return libKey{k}
	}
	pec, prsa, lec := key("payments", "ec-key"), key("payments", "rsa-key"), key("ledger", "ec-key")
	ecPub := e.topo.Keys["ec-key"].Public()
	rsaPub := e.topo.Keys["rsa-key"].Public().(*rsa.PublicKey)
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	tasks := []Task{
		SignTask("payments/ec-key ECDSA P-256 SHA-256", 35, pec, ecPub, crypto.SHA256),
		SignTask("payments/rsa-key RSA PKCS#1 v1.5 SHA-256", 15, prsa, rsaPub, crypto.SHA256),
		SignTask("payments/rsa-key RSA-PSS SHA-256", 10, prsa, rsaPub, pss),
		DecryptOAEPTask("payments/rsa-key RSA-OAEP SHA-1 decrypt", 25, prsa, rsaPub, crypto.SHA1),
		SignTask("ledger/ec-key ECDSA P-256 SHA-256", 15, lec, ecPub, crypto.SHA256),
	}
	e.keys = []string{"payments/ec-key", "payments/rsa-key", "payments/rsa-key", "payments/rsa-key", "ledger/ec-key"}
	return tasks
}

// check asserts the invariants every scenario shares and fills the row.
func (e *env) check(ops []Op, s Summary, r *row) {
	t := e.t
	local := e.cfg.Policy.AttemptTimeout.Local.D()
	r.ops, r.failed, r.invalid = s.Ops, s.Failed, s.Invalid
	r.p50, r.p99, r.p999, r.max = s.P50, s.P99, s.P999, s.Max
	r.drHealthy, r.healthyServed, r.drAll = s.DRShareHealthy(), s.HealthyServed, s.DR
	r.recovery, r.recoveryNote = e.recovery, e.recoveryNote
	r.rotation, r.rotationNote = e.rotation, e.rotationNote
	if trips := e.samp.spuriousTrips(e); len(trips) > 0 {
		r.note = fmt.Sprintf("(%d trips of fault-free devices)", len(trips))
		e.logf("breakers opened on devices with no fault injected (attempt timeouts from host hiccups): %s", strings.Join(trips, ", "))
	}

	var bad, late, invalid []string
	window := 0
	var firstBad time.Duration
	slackLate := hangSlack
	if e.tm.long {
		slackLate = deadlineSlack
	}
	for i := range ops {
		o := &ops[i]
		if o.Latency > o.Deadline+slackLate {
			late = append(late, e.describe(o))
		}
		if o.Invalid != nil {
			invalid = append(invalid, e.describe(o))
		}
		if o.Served() {
			continue
		}
		switch {
		case o.Deadline < local:
			// The caller's own deadline is shorter than one attempt deadline: no retry fits in it. Allowed.
			r.allowed++
		case e.allowTo >= 0 && o.End() >= e.allowFrom && o.Start < e.allowTo:
			// No device at all can serve: a clear error is the right answer.
			if errors.Is(o.Err, pkcs11ha.ErrNoDevice) {
				r.allowed++
				window++
			} else {
				if len(bad) == 0 || o.Start < firstBad {
					firstBad = o.Start
				}
				bad = append(bad, e.describe(o)+" (while all devices were down the error must match ErrNoDevice)")
			}
		default:
			if len(bad) == 0 || o.Start < firstBad {
				firstBad = o.Start
			}
			bad = append(bad, e.describe(o))
		}
	}
	if len(bad) > 0 {
		t.Errorf("INVARIANT failed calls: %d calls failed while a device holding the key was reachable; first ones:\n  %s",
			len(bad), strings.Join(first(bad, 10), "\n  "))
	}
	if len(late) > 0 {
		t.Errorf("INVARIANT caller deadline: %d calls returned more than %v past their own deadline; first ones:\n  %s",
			len(late), slackLate, strings.Join(first(late, 10), "\n  "))
	}
	if len(invalid) > 0 {
		t.Errorf("INVARIANT invalid results: %d signatures or decryptions did not verify; first ones:\n  %s",
			len(invalid), strings.Join(first(invalid, 10), "\n  "))
	}
	if s.HealthyServed == 0 {
		t.Errorf("no call was served in a healthy phase: the run says nothing about the DR share")
	}
	// A healthy local device that answers late (a host too loaded to schedule it) times out and sends calls to
	// DR: the DR share depends on the host's load, so it is a bound (routing's own rule, DR only when the
	// local tier cannot serve, is proven with fakes in failover's unit tests).
	if s.HealthyDR > 0 {
		e.bound(false, "INVARIANT DR share while the local tier is healthy: %d of %d calls (%.2f%%) went to DR; %s",
			s.HealthyDR, s.HealthyServed, 100*s.DRShareHealthy(), e.firstDR(ops, true))
	}
	if e.sc.singleDevice && s.DR > 0 {
		e.bound(false, "INVARIANT no DR while the other local device is healthy: %d calls went to DR; %s", s.DR, e.firstDR(ops, false))
	}
	if e.sc.p99 > 0 {
		e.bound(s.P99 <= e.sc.p99, "INVARIANT p99 %v above the scenario's bound %v (p50 %v, p99.9 %v, max %v; %s)",
			s.P99.Round(time.Microsecond), e.sc.p99, s.P50.Round(time.Microsecond), s.P999.Round(time.Microsecond), s.Max.Round(time.Microsecond), e.stal.summary())
	}
	if e.sc.recovery != nil && e.recovery < 0 && e.recoveryNote == "" {
		t.Errorf("the scenario has a recovery bound but measured no recovery")
	}
	// Failover: fault injected -> the first call started after it and served by a device the fault does not hit.
	if e.faultAt >= 0 && len(e.victims) > 0 {
		best := time.Duration(-1)
		for i := range ops {
			o := &ops[i]
			if o.Start >= e.faultAt && o.Served() && !slices.Contains(e.victims, o.Device) {
				if d := o.End() - e.faultAt; best < 0 || d < best {
					best = d
				}
			}
		}
		r.failover = best
	}
	if window > 0 {
		e.logf("%d calls failed with ErrNoDevice while no device could serve (allowed), e.g. %s", window, e.firstErr(ops, e.allowFrom))
	}
	if len(bad) > 0 {
		t.Logf("library log around the first failed call:\n%s", e.logsAround(firstBad, 1500*time.Millisecond))
	}
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

func (e *env) describe(o *Op) string {
	s := fmt.Sprintf("t=%.3fs %s on %q (%s) after %v (deadline %v)", o.Start.Seconds(), e.load.Tasks[o.Task].Name, o.Device,
		e.rec.Phases()[o.Phase].Name, o.Latency.Round(time.Microsecond), o.Deadline)
	if o.Err != nil {
		s += ": " + o.Err.Error()
	}
	if o.Invalid != nil {
		s += ": INVALID: " + o.Invalid.Error()
	}
	return s
}

func (e *env) firstDR(ops []Op, healthyOnly bool) string {
	phases := e.rec.Phases()
	// A DR call faster than one local attempt deadline was routed to DR at once (the local tier was out of
	// the view: breakers open or devices down); a slower one was retried there after local attempt(s) failed.
	local := e.cfg.Policy.AttemptTimeout.Local.D()
	direct, retried := 0, 0
	for i := range ops {
		o := &ops[i]
		if o.Served() && e.isDR(o.Device) && (!healthyOnly || HealthyThroughout(o, phases)) {
			if o.Latency < local {
				direct++
			} else {
				retried++
			}
		}
	}
	head := fmt.Sprintf("%d routed straight to DR, %d retried there after a local attempt failed; ", direct, retried)
	for i := range ops {
		o := &ops[i]
		if o.Served() && e.isDR(o.Device) && (!healthyOnly || HealthyThroughout(o, phases)) {
			return head + "first: " + e.describe(o) + "; " + e.stal.around(o.Start) + "\nlibrary log around it:\n" + e.logsAround(o.Start, 1500*time.Millisecond)
		}
	}
	return ""
}

func (e *env) firstErr(ops []Op, from time.Duration) string {
	for i := range ops {
		if ops[i].Err != nil && ops[i].Start >= from && ops[i].Deadline >= e.tm.deadline {
			return ops[i].Err.Error()
		}
	}
	return ""
}

// report logs what happened per phase and per device: enough to diagnose a failure from the log alone.
func (e *env) report(ops []Op, s Summary) {
	t := e.t
	phases := e.rec.Phases()
	var b strings.Builder
	fmt.Fprintf(&b, "%d calls, %d failed, %d invalid, p50 %v p99 %v p99.9 %v max %v; %s\n", s.Ops, s.Failed, s.Invalid,
		s.P50.Round(time.Microsecond), s.P99.Round(time.Microsecond), s.P999.Round(time.Microsecond), s.Max.Round(time.Microsecond), e.stal.summary())
	for pi, p := range phases {
		end := e.rec.Now()
		if pi+1 < len(phases) {
			end = phases[pi+1].Start
		}
		var lat []time.Duration
		by := map[string]int{}
		failed := 0
		for i := range ops {
			if ops[i].Phase != pi {
				continue
			}
			lat = append(lat, ops[i].Latency)
			if ops[i].Served() {
				by[ops[i].Device]++
			} else {
				failed++
			}
		}
		slices.Sort(lat)
		healthy := ""
		if p.Healthy {
			healthy = " healthy"
		}
		fmt.Fprintf(&b, "  phase %-22s%-8s %6.2fs-%6.2fs %6d calls %4d failed p99 %8v max %8v served by %s\n", p.Name, healthy,
			p.Start.Seconds(), end.Seconds(), len(lat), failed, Percentile(lat, .99).Round(time.Microsecond),
			Percentile(lat, 1).Round(time.Microsecond), fmtCounts(by))
	}
	b.WriteString("device state changes:\n" + e.samp.transitions())
	b.WriteString("final status:\n" + e.statusTable())
	b.WriteString(e.metricsSummary())
	t.Log("\n" + b.String())
}

func fmtCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func (e *env) statusTable() string {
	var b strings.Builder
	for _, st := range e.cl.Status() {
		fmt.Fprintf(&b, "  %-9s %-8s breaker=%-9s ewma=%-10v inflight=%d abandoned=%d reinits=%d retired=%d stuck=%d", st.Name, st.State,
			st.Breaker, st.EWMA.Round(time.Microsecond), st.InFlight, st.Abandoned, st.Reinits, st.RetiredInstances, st.StuckCalls)
		if st.Reason != "" {
			fmt.Fprintf(&b, " reason=%q", st.Reason)
		}
		if st.LastError != "" {
			fmt.Fprintf(&b, " last_error=%q", st.LastError)
		}
		for k, v := range st.ExcludedKeys {
			fmt.Fprintf(&b, " excluded[%s]=%q", k, v)
		}
		for _, p := range st.Partitions {
			if !p.Open {
				fmt.Fprintf(&b, " partition[%s] closed: %q", p.Name, p.Error)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// metricsSummary picks a few counters from the cluster's Prometheus registry.
func (e *env) metricsSummary() string {
	mfs, err := e.reg.Gather()
	if err != nil {
		return "metrics: " + err.Error() + "\n"
	}
	want := map[string]bool{"pkcs11ha_failovers_total": true, "pkcs11ha_dr_spills_total": true, "pkcs11ha_retries_total": true,
		"pkcs11ha_reinits_total": true, "pkcs11ha_hedges_total": true}
	var parts []string
	for _, mf := range mfs {
		if !want[mf.GetName()] {
			continue
		}
		sum := 0.0
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		parts = append(parts, fmt.Sprintf("%s=%.0f", strings.TrimPrefix(mf.GetName(), "pkcs11ha_"), sum))
	}
	sort.Strings(parts)
	return "metrics: " + strings.Join(parts, " ") + "\n"
}

// settleAbandoned waits (up to 3 s) for abandoned calls to return once the faults are released, and returns
// how many are left on devices whose module instance was retired: calls the library reports as stuck for good.
func (e *env) settleAbandoned() int {
	stuck := leakcheck.Settle(func() (int, int) { return leakcheck.Stuck(e.cl.Status()) }, 3*time.Second)
	if stuck > 0 {
		e.t.Logf("%d calls stuck for good in retired module instances (p11-kit bug, reported by the library):\n%s", stuck, e.statusTable())
	}
	return stuck
}

// logsAround returns the library's log lines from window before at to window after it (recorder clock).
func (e *env) logsAround(at, window time.Duration) string {
	from, to := e.rec.Origin().Add(at-window), e.rec.Origin().Add(at+window)
	var out []string
	for _, l := range strings.Split(e.logs.tail(4000), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "time=") {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time="))
		if err != nil || ts.Before(from) || ts.After(to) {
			continue
		}
		out = append(out, fmt.Sprintf("    [%7.3fs] %s", ts.Sub(e.rec.Origin()).Seconds(), truncate(strings.Join(f[1:], " "), 220)))
	}
	if len(out) > 30 {
		out = append(out[:15], append([]string{"    ..."}, out[len(out)-15:]...)...)
	}
	return strings.Join(out, "\n")
}

// releaseFaults resumes paused devices and lets every relay pass, so that calls stuck in cgo return
// before the cluster is closed and the goroutine check runs.
func releaseFaults(t *testing.T, topo *softhsmtest.Topology) {
	for _, d := range topo.Devices {
		if d.Paused() {
			if err := d.Resume(); err != nil {
				t.Errorf("resume %s: %v", d.Name, err)
			}
		}
		if !d.InProcess {
			_ = d.Pass()
			_ = d.SetDelay(0, 0)
		}
	}
}

// sampler polls Cluster.Status and keeps every change of a device's state, breaker or abandoned calls.
type sampler struct {
	e      *env
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	last   map[string]string
	lines  []string
	events []stateEvent
}

type stateEvent struct {
	at      time.Duration
	device  string
	state   string
	breaker string
}

func startSampler(e *env, every time.Duration) *sampler {
	s := &sampler{e: e, done: make(chan struct{}), last: map[string]string{}}
	s.poll()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tk.C:
				s.poll()
			}
		}
	}()
	return s
}

func (s *sampler) poll() {
	now := s.e.rec.Now()
	for _, st := range s.e.cl.Status() {
		key := st.State + " breaker=" + st.Breaker
		if st.Abandoned > 0 {
			key += fmt.Sprintf(" abandoned=%d", st.Abandoned)
		}
		s.mu.Lock()
		if s.last[st.Name] != key {
			line := fmt.Sprintf("  [%7.3fs] %-9s %s", now.Seconds(), st.Name, key)
			if st.State != "up" && st.Reason != "" {
				line += fmt.Sprintf(" (%s)", truncate(st.Reason, 160))
			}
			s.lines = append(s.lines, line)
			s.last[st.Name] = key
			s.events = append(s.events, stateEvent{at: now, device: st.Name, state: st.State, breaker: st.Breaker})
		}
		s.mu.Unlock()
	}
}

// spuriousTrips lists the breakers that opened on a device that had no fault: before any fault was
// injected on it, or, for a local device, during a healthy phase (after its fault was removed and it
// recovered).
func (s *sampler) spuriousTrips(e *env) []string {
	phases := e.rec.Phases()
	healthyAt := func(at time.Duration) bool {
		h := false
		for _, p := range phases {
			if p.Start <= at {
				h = p.Healthy
			}
		}
		return h
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	prev := map[string]string{}
	for _, ev := range s.events {
		if ev.breaker == "open" && prev[ev.device] != "open" && prev[ev.device] != "" {
			at, faulted := e.faulted[ev.device]
			if !faulted || ev.at < at || (!e.isDR(ev.device) && healthyAt(ev.at)) {
				out = append(out, fmt.Sprintf("%s at %.2fs", ev.device, ev.at.Seconds()))
			}
		}
		prev[ev.device] = ev.breaker
	}
	return out
}

func (s *sampler) stop() {
	close(s.done)
	s.wg.Wait()
}

func (s *sampler) transitions() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := s.lines
	if len(lines) > 120 {
		lines = append(append(slices.Clone(lines[:20]), fmt.Sprintf("  ... %d more ...", len(lines)-120)), lines[len(lines)-100:]...)
	}
	return strings.Join(lines, "\n") + "\n"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// stallDetector measures how late a 5 ms sleep wakes up: a host too busy to schedule us explains latency
// that the cluster did not cause. Diagnostics only; no invariant is relaxed because of it.
type stallDetector struct {
	origin time.Time
	done   atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	stalls []Mark // At = when, Name = how long
	worst  time.Duration
}

func startStallDetector(origin time.Time) *stallDetector {
	s := &stallDetector{origin: origin}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for !s.done.Load() {
			t0 := time.Now()
			time.Sleep(5 * time.Millisecond)
			over := time.Since(t0) - 5*time.Millisecond
			if over > 20*time.Millisecond {
				s.mu.Lock()
				s.stalls = append(s.stalls, Mark{Name: over.Round(time.Millisecond).String(), At: t0.Sub(s.origin)})
				s.worst = max(s.worst, over)
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *stallDetector) stop() {
	s.done.Store(true)
	s.wg.Wait()
}

func (s *stallDetector) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("host stalls > 20ms: %d, worst %v", len(s.stalls), s.worst.Round(time.Millisecond))
}

// around lists host stalls within 200 ms of at (on the recorder's clock).
func (s *stallDetector) around(at time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var near []string
	for _, m := range s.stalls {
		if m.At > at-200*time.Millisecond && m.At < at+200*time.Millisecond {
			near = append(near, fmt.Sprintf("%s at %.3fs", m.Name, m.At.Seconds()))
		}
	}
	if len(near) == 0 {
		return "no host stall > 20ms near it"
	}
	return "host stalls near it: " + strings.Join(near, ", ")
}

// logBuffer keeps the last lines the library logged.
type logBuffer struct {
	mu    sync.Mutex
	max   int
	lines []string
	part  []byte
}

func newLogBuffer(max int) *logBuffer { return &logBuffer{max: max} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.part[:i]))
		l.part = l.part[i+1:]
	}
	if len(l.lines) > l.max {
		l.lines = slices.Clone(l.lines[len(l.lines)-l.max:])
	}
	return len(p), nil
}

func (l *logBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

// loginAttempts is partition's C_Login count on device, from the cluster's Status.
func loginAttempts(cl *pkcs11ha.Cluster, device, partition string) int64 {
	for _, ds := range cl.Status() {
		for _, p := range ds.Partitions {
			if ds.Name == device && p.Name == partition {
				return p.Logins
			}
		}
	}
	return 0
}
