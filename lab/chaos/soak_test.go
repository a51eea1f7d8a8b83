package chaos

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// The soak: months of HSM maintenance in minutes. The two local devices are killed and restarted in turn
// (plus SIGSTOP/SIGCONT cycles) under the usual load, each cycle waiting until both local devices are up
// again, and the run asserts, beyond the invariants every scenario shares (no failed call: in the soak every
// caller has the full deadline; no invalid result; no DR traffic while the local pair is healthy, a timing
// bound: see chaos_test.go):
//
//   - every device is up at the end, and each local device serves its fair share (>= 30 %) of the calls of
//     the healthy tail;
//   - the OS threads of the process (/proc/self/status) and its goroutines do not grow beyond the calls the
//     library reports stuck in retired module instances (plus a fixed margin for the Go runtime's idle
//     threads and the router's idle attempt workers, which do not depend on the number of cycles);
//   - the stuck-call account (Cluster.StuckCalls) matches the devices' rows and stays under its cap.
//
// It also measures how often a kill strands calls for good (the p11-kit 0.24 client bug, see docs/ARCHITECTURE.md, "Facts about SoftHSM and p11-kit")
// and logs it as the SOAK line. Short form in `make test` (< 60 s); CHAOS_LONG=1 for >= 100 kill cycles.

// soakPlan is the shape of a soak run.
type soakPlan struct {
	kills, pauses int           // kill/restart and SIGSTOP/SIGCONT cycles, alternating between the local devices
	down          time.Duration // how long a victim stays killed or paused
	tail          time.Duration // healthy tail over which the fair share is measured
}

var (
	soakShort = soakPlan{kills: 8, pauses: 2, down: 300 * time.Millisecond, tail: 2 * time.Second}
	// The long tail is two EWMA decays of the policies the soak runs (10 s): one slow call is a peak of a
	// device's estimate that fades over about a decay (health.PeakEWMA, by design). A tail shorter than a
	// decay is decided by a few such peaks and in-flight counts (a 5 s tail: the restarted device served
	// 26-46 % in five runs of 2026-12-07); two decays average them.
	soakLong = soakPlan{kills: 100, pauses: 20, down: 500 * time.Millisecond, tail: 20 * time.Second}
)

// Margins for the growth checks: the Go runtime keeps the threads it created for blocked cgo calls (as many
// as ever ran at once: the load, abandoned calls, probes, re-inits), and the router keeps an idle attempt
// worker for 10 s. Neither grows with the number of cycles.
const (
	soakThreadMargin    = 48
	soakGoroutineMargin = 48
	soakFairShare       = 0.3
)

func TestSoak(t *testing.T) {
	tm, plan := shortTiming, soakShort
	long := os.Getenv("CHAOS_LONG") == "1"
	if long {
		tm, plan = longTiming, soakLong
	}
	tm.shortEvery = 0 // no caller in a hurry: the soak allows no failed call at all
	variants := []policy{fastPolicy}
	if long || os.Getenv("CHAOS_SOAK_LANES") == "1" {
		// The same with lanes (policy.p11kit_client_instances), to measure what they change.
		variants = append(variants, policy{name: "fast+lanes", yaml: fastPolicy.yaml + "\np11kit_client_instances: 8"})
	}
	for _, pol := range variants {
		t.Run(pol.name, func(t *testing.T) {
			sc := soakScenario(plan, pol)
			r := newRow(sc)
			began := time.Now()
			t.Cleanup(func() { r.passed = !t.Failed(); t.Log("\n" + formatTable([]*row{r}, tm, time.Since(began))) })
			runScenario(t, sc, tm, r, "")
		})
	}
}

// soakSample is what the soak records after each cycle, once both local devices are up again.
type soakSample struct {
	threads, goroutines int
	stuck               int64 // Cluster.StuckCalls().Calls
}

func soakScenario(plan soakPlan, pol policy) scenario {
	s := &soakState{plan: plan}
	return scenario{
		name: "soak", policy: pol, p99: 0, recovery: afterFlapping,
		run:   s.run,
		check: s.check,
	}
}

type soakState struct {
	plan    soakPlan
	samples []soakSample
	// tailEWMA: the local devices' lowest and highest latency estimate seen over the tail, and tailLanes
	// the fewest lanes open (devices with lanes), for the SOAK line.
	tailEWMA  map[string][2]time.Duration
	tailLanes map[string]pkcs11ha.LaneStatus
	stranded  map[string][]int64 // device -> calls stranded by each of its kills
	tailFrom  time.Duration
	// slowest recovery of a kill cycle and of a pause cycle, and the pause cycles' largest bound
	worstKill, worstPause, pauseBound time.Duration
}

func (s *soakState) sample(e *env) soakSample {
	return soakSample{threads: osThreads(e), goroutines: runtime.NumGoroutine(), stuck: e.cl.StuckCalls().Calls}
}

func (s *soakState) run(e *env) {
	locals := e.localDevices()
	s.stranded = map[string][]int64{}
	s.samples = append(s.samples, s.sample(e))
	n := s.plan.kills + s.plan.pauses
	pauseEvery := n + 1
	if s.plan.pauses > 0 {
		pauseEvery = n / s.plan.pauses
	}
	kills, pauses := 0, 0
	// Recovery bounds: a killed device comes back on a fresh instance with its latency estimate reset (and
	// its breaker a repeat offender: the flapping bound). A short pause takes no device down: the timeouts
	// it caused are a penalty on the device's latency estimate, which its fast probes work off with
	// decay/10 (from a 50 ms penalty to a ~1 ms partner: ~4 such decays), four times more slowly when the
	// device stalled less than 3 decays before and was not re-initialised since (a kill re-initialises it:
	// health.PeakEWMA.Penalize, Reset): plus a probe interval and slack.
	killBound := e.recBound
	pol := &e.cfg.Policy
	pauseBound := func(repeat bool) time.Duration {
		work := 4 * pol.EWMADecay.D() / 10
		if repeat {
			work *= 4
		}
		return work + pol.Health.Interval.D() + slack
	}
	lastPause := map[string]time.Time{} // since the device's last re-init
	for i := range n {
		// Kills and pauses each alternate between the local devices; the last cycle is a kill (a paused
		// device comes back looking slow for a few seconds: its timeouts are a penalty it works off).
		pause := (i+1)%pauseEvery == pauseEvery/2
		victim := locals[kills%len(locals)]
		if pause {
			victim = locals[pauses%len(locals)]
			pauses++
		} else {
			kills++
		}
		d := e.dev(victim)
		before := e.stuckOf(victim)
		e.recBound = killBound
		if pause {
			last, ok := lastPause[victim]
			e.recBound = pauseBound(ok && time.Since(last) < 3*pol.EWMADecay.D())
			s.pauseBound = max(s.pauseBound, e.recBound)
			e.inject(fmt.Sprintf("#%d %s paused", i+1, victim), false, []string{victim}, d.Pause)
			e.hold(s.plan.down)
			e.remove(fmt.Sprintf("#%d %s resumed", i+1, victim), d.Resume)
			lastPause[victim] = time.Now()
		} else {
			delete(lastPause, victim)
			e.inject(fmt.Sprintf("#%d %s killed", i+1, victim), false, []string{victim}, d.Kill)
			e.hold(s.plan.down)
			e.remove(fmt.Sprintf("#%d %s restarted", i+1, victim), func() error { return d.Start(e.ctx) })
		}
		// A cycle that misses its bound fails the soak but does not end it: the later cycles still say how
		// often a kill strands calls, and whether the process keeps its threads.
		if e.waitRecovered(victim+" serves again", servedBy(victim)) {
			if pause {
				s.worstPause = max(s.worstPause, e.recovery)
			} else {
				s.worstKill = max(s.worstKill, e.recovery)
			}
		}
		if !e.waitLocalUp(locals) {
			e.waitLocalUp(locals) // once more, so that the next cycle starts from a pair that is up if it can
		}
		if !pause {
			s.stranded[victim] = append(s.stranded[victim], e.stuckOf(victim)-before)
		}
		e.healthy(fmt.Sprintf("#%d both up", i+1))
		s.samples = append(s.samples, s.sample(e))
	}
	// The results table shows the kill cycles against their bound; the SOAK line adds the pause cycles.
	e.recovery, e.recBound = s.worstKill, killBound
	// The last victim back in rotation (as the chaos scenarios measure it), then half an EWMA decay for its
	// latency estimate (reset to the initial guess by its re-init) to meet its real latency, then the tail.
	if len(e.victims) > 0 {
		e.waitRotation(e.victims[0], nil)
	}
	e.hold(e.cfg.Policy.EWMADecay.D() / 2)
	s.tailFrom = e.rec.Now()
	e.healthy("soak over")
	s.watchTail(e, s.plan.tail)
	s.samples = append(s.samples, s.sample(e))
}

// watchTail holds for d, sampling the local devices' latency estimates and open lanes, so that a share
// missed in the tail says whether a latency peak, or a device serving on fewer instances, was behind it.
func (s *soakState) watchTail(e *env, d time.Duration) {
	s.tailEWMA, s.tailLanes = map[string][2]time.Duration{}, map[string]pkcs11ha.LaneStatus{}
	for end := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		for _, st := range e.cl.Status() {
			if e.isDR(st.Name) {
				continue
			}
			r, ok := s.tailEWMA[st.Name]
			if !ok {
				r = [2]time.Duration{st.EWMA, st.EWMA}
			}
			s.tailEWMA[st.Name] = [2]time.Duration{min(r[0], st.EWMA), max(r[1], st.EWMA)}
			if l := st.Lanes; l != nil {
				if m, ok := s.tailLanes[st.Name]; !ok || l.Open < m.Open {
					s.tailLanes[st.Name] = *l
				}
			}
		}
		if !time.Now().Before(end) {
			return
		}
	}
}

// fmtTail is the tail's estimate ranges and fewest open lanes: "eastus-1 9ms-17ms (lanes ≥ 7/8), ...".
func (s *soakState) fmtTail(locals []string) string {
	var out []string
	for _, l := range locals {
		r := s.tailEWMA[l]
		f := fmt.Sprintf("%s %v-%v", l, r[0].Round(100*time.Microsecond), r[1].Round(100*time.Microsecond))
		if ln, ok := s.tailLanes[l]; ok {
			f += fmt.Sprintf(" (lanes ≥ %d/%d)", ln.Open, ln.Total)
		}
		out = append(out, f)
	}
	return strings.Join(out, ", ")
}

// stuckOf is a device's StuckCalls.
func (e *env) stuckOf(device string) int64 {
	for _, st := range e.cl.Status() {
		if st.Name == device {
			return st.StuckCalls
		}
	}
	return 0
}

// waitLocalUp waits until every local device's state is "up": within the recovery bound in the long form,
// within the liveness wait past it in the short form.
func (e *env) waitLocalUp(locals []string) bool {
	e.t.Helper()
	began := time.Now()
	deadline := began.Add(e.recBound)
	if !e.tm.long {
		deadline = deadline.Add(livenessWait)
	}
	for {
		up := 0
		for _, st := range e.cl.Status() {
			for _, l := range locals {
				if st.Name == l && st.State == "up" {
					up++
				}
			}
		}
		if up == len(locals) {
			took := time.Since(began)
			e.bound(took <= e.recBound, "the local devices were all up %v after the fault was removed, bound %v", took.Round(time.Millisecond), e.recBound)
			return true
		}
		if time.Now().After(deadline) {
			e.t.Errorf("INVARIANT the local devices are not all up %v after the fault was removed\n%s", time.Since(began).Round(time.Millisecond), e.statusTable())
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *soakState) check(e *env, ops []Op, _ Summary) {
	t := e.t
	if len(s.samples) < 2 {
		return // the script failed; its error says why
	}
	// Every device up at the end (in the short form, once a probe slowed by a loaded host has been followed
	// by good ones: up within the liveness wait), and the stuck-call account consistent with the devices' rows.
	for waited := time.Duration(0); !e.tm.long && waited < livenessWait && !allUp(e.cl.Status()); waited += 100 * time.Millisecond {
		time.Sleep(100 * time.Millisecond)
	}
	sts := e.cl.Status()
	var stuck int64
	for _, st := range sts {
		if st.State != "up" {
			t.Errorf("INVARIANT %s is %s at the end of the soak, want up\n%s", st.Name, st.State, e.statusTable())
		}
		stuck += st.StuckCalls
	}
	// The total is process-wide: it may hold calls stranded by an earlier cluster of this test binary
	// (some of which may return meanwhile), but what it gained during the soak is this cluster's rows.
	total := e.cl.StuckCalls()
	if stuck > total.Calls || total.Calls-s.samples[0].stuck > stuck {
		t.Errorf("the stuck-call total (%d, %d at the start) does not match the devices' rows (%d)", total.Calls, s.samples[0].stuck, stuck)
	}
	if total.Calls > int64(total.Limit) {
		t.Errorf("INVARIANT %d stuck calls, past the cap %d", total.Calls, total.Limit)
	}

	by, means := s.fairShare(e, ops)

	// Threads and goroutines: growth within the stuck calls, from the sample after the second cycle (by
	// then every module instance has opened: lanes open in the background after Open) to the last.
	first, last := s.samples[min(2, len(s.samples)-1)], s.samples[len(s.samples)-1]
	maxThreads := 0
	for _, x := range s.samples {
		maxThreads = max(maxThreads, x.threads)
	}
	grown := last.stuck - first.stuck
	if last.threads > first.threads+int(grown)+soakThreadMargin {
		t.Errorf("INVARIANT OS threads grew from %d to %d, more than the %d calls stuck meanwhile + %d", first.threads, last.threads, grown, soakThreadMargin)
	}
	if last.goroutines > first.goroutines+int(grown)+soakGoroutineMargin {
		t.Errorf("INVARIANT goroutines grew from %d to %d, more than the %d calls stuck meanwhile + %d", first.goroutines, last.goroutines, grown, soakGoroutineMargin)
	}

	kills, stranding, calls, worst := 0, 0, int64(0), int64(0)
	var per []string
	for _, l := range e.localDevices() {
		k := 0
		for _, c := range s.stranded[l] {
			kills++
			if c > 0 {
				stranding++
				k++
			}
			calls += c
			worst = max(worst, c)
		}
		per = append(per, fmt.Sprintf("%s %d/%d", l, k, len(s.stranded[l])))
	}
	e.logf("SOAK %d kill and %d pause cycles, %d calls (%d failed, %d invalid); kills that stranded calls: %d of %d (%s), "+
		"calls stranded: %d (at most %d per kill); stuck calls at the end: %d (cap %d); OS threads: %d at the start, %d at the end, "+
		"%d at most; goroutines: %d -> %d; served in the tail (%v): %s, mean latency %s, latency estimates %s; slowest recovery: kill %v (bound %v), pause %v (bound %v)",
		s.plan.kills, s.plan.pauses, len(ops), countFailed(ops), countInvalid(ops), stranding, kills, strings.Join(per, ", "),
		calls, worst, total.Calls, total.Limit, first.threads, last.threads, maxThreads, first.goroutines, last.goroutines, s.plan.tail, fmtCounts(by), means, s.fmtTail(e.localDevices()),
		s.worstKill.Round(time.Millisecond), e.recBound, s.worstPause.Round(time.Millisecond), s.pauseBound)
}

// fairShare asserts that each local device served its share of the healthy tail, and returns the calls each
// device served in it and the local devices' mean latencies there, for the SOAK line.
func (s *soakState) fairShare(e *env, ops []Op) (map[string]int, string) {
	t := e.t
	by := map[string]int{}
	lat := map[string]time.Duration{}
	n := 0
	for i := range ops {
		o := &ops[i]
		if o.Served() && o.Start >= s.tailFrom {
			by[o.Device]++
			lat[o.Device] += o.Latency
			if !e.isDR(o.Device) {
				n++
			}
		}
	}
	// Each local device serves in the tail; its share follows the latency estimates, which follow the host's
	// load: the share is a bound.
	var means []string
	for _, l := range e.localDevices() {
		if by[l] == 0 {
			t.Errorf("INVARIANT %s served none of the %d local calls of the healthy tail", l, n)
		} else {
			means = append(means, fmt.Sprintf("%s %v", l, (lat[l]/time.Duration(by[l])).Round(10*time.Microsecond)))
		}
		e.bound(float64(by[l]) >= soakFairShare*float64(n), "INVARIANT fair share: %s served %d of the %d local calls of the healthy tail, want >= %.0f%%", l, by[l], n, 100*soakFairShare)
	}
	return by, strings.Join(means, ", ")
}

func countFailed(ops []Op) int {
	n := 0
	for i := range ops {
		if !ops[i].Served() {
			n++
		}
	}
	return n
}

func countInvalid(ops []Op) int {
	n := 0
	for i := range ops {
		if ops[i].Invalid != nil {
			n++
		}
	}
	return n
}

// osThreads reads Threads: from /proc/self/status (0 when there is no /proc).
func osThreads(e *env) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				return n
			}
		}
	}
	e.t.Errorf("no Threads: line in /proc/self/status")
	return 0
}

func allUp(sts []pkcs11ha.DeviceStatus) bool {
	for _, st := range sts {
		if st.State != "up" {
			return false
		}
	}
	return true
}
