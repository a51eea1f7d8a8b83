package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// Recovery bounds are derived from the effective policy, so that they hold for the defaults as well as for
// the fast policy:
//
//   - probeUp: a device whose fault is gone is seen up again after `rise` probes at the down interval
//     (+15 % jitter), plus ~1 s to re-initialise its module and reopen its partitions;
//   - its breaker may still be open from the fault: at most open_base for a first offence; for a repeat
//     offender (half-open trials that failed during a hang) about 2.4 x the fault's duration, capped at
//     open_max; open_max after flapping;
//   - plus 2 s of slack for a loaded 2-core machine.
//
// The same bound applies to "rotation" (the device serves >= 20 % of the local calls it can serve again).
func probeUp(p *pkcs11ha.Policy) time.Duration {
	return time.Duration(float64(p.Health.Rise)*1.15*float64(p.Health.DownInterval.D())) + time.Second
}

const slack = 2 * time.Second

// afterFirstOffence: a device that failed once (kill, restart, reset, region down).
func afterFirstOffence(p *pkcs11ha.Policy, _ timing) time.Duration {
	return max(p.Breaker.OpenBase.D(), probeUp(p)) + slack
}

// afterRepeatOffences: a device whose breaker kept re-opening while the fault lasted (failed half-open trials
// during a hang). Open periods double (+20 % jitter) up to open_max, so the one running when the fault ends
// is at most ~2.4 x the time the fault has lasted (or open_base).
func afterRepeatOffences(p *pkcs11ha.Policy, tm timing) time.Duration {
	last := time.Duration(2.4 * float64(max(tm.fault, p.Breaker.OpenBase.D())))
	return min(p.Breaker.OpenMax.D(), last) + probeUp(p) + slack
}

// afterFlapping: a repeat offender for as long as the flapping lasted: open_max at worst.
func afterFlapping(p *pkcs11ha.Policy, _ timing) time.Duration {
	return max(p.Breaker.OpenMax.D(), probeUp(p)) + slack
}

// Bounds on p99 over every call of a run (baseline p99 at 400 ops/s is ~5-15 ms on the 2-core machine):
const (
	p99Local = 50 * time.Millisecond  // a local fault: at most one local attempt deadline
	p99DR    = 250 * time.Millisecond // the local region down: traffic served from DR, one DR attempt deadline
)

func scenarios(tm timing) []scenario {
	all := baseScenarios()
	if tm.long {
		// The defaults must hold too: the long form runs the scenarios that use the fast policy for speed
		// once more with the default one (flapping excepted: with open_max 5 min a flapping device is kept
		// out for minutes, on purpose).
		for _, sc := range baseScenarios() {
			if sc.policy.name == fastPolicy.name && sc.name != "flapping" {
				sc.name += "/default"
				sc.policy = defaultPolicy
				all = append(all, sc)
			}
		}
	}
	return all
}

func baseScenarios() []scenario {
	return []scenario{
		{
			name: "kill", policy: fastPolicy, p99: p99Local, recovery: afterFirstOffence, singleDevice: true,
			run: func(e *env) {
				d := e.dev("eastus-1")
				e.inject("eastus-1 killed", false, []string{"eastus-1"}, d.Kill)
				e.hold(e.tm.fault)
				e.remove("eastus-1 restarted", func() error { return d.Start(e.ctx) })
				e.recoverDevice("eastus-1")
			},
		},
		{
			name: "hang-sigstop", policy: fastPolicy, p99: p99Local, recovery: afterRepeatOffences, singleDevice: true,
			run: func(e *env) {
				d := e.dev("eastus-1")
				e.inject("eastus-1 paused (SIGSTOP)", false, []string{"eastus-1"}, d.Pause)
				e.hold(e.tm.fault)
				e.remove("eastus-1 resumed", d.Resume)
				e.recoverDevice("eastus-1")
			},
		},
		{
			name: "hang-relay", policy: fastPolicy, p99: p99Local, recovery: afterRepeatOffences, singleDevice: true,
			run: func(e *env) {
				d := e.dev("eastus-1")
				e.inject("eastus-1 relay hangs", false, []string{"eastus-1"}, d.Hang)
				e.hold(e.tm.fault)
				e.remove("eastus-1 relay passes", d.Pass)
				e.recoverDevice("eastus-1")
			},
		},
		{
			// eastus-1 answers, slowly (4 ms each way: ~25-30 ms a call, under the 50 ms attempt deadline). The
			// peak EWMA moves the load to eastus-2, never to DR. Back in rotation once the EWMA has decayed
			// (10 s by default, on purpose: one fast reply must not attract a flood): bound 2 x decay.
			name: "slow-local", policy: defaultPolicy, p99: p99Local, singleDevice: true,
			recovery: func(p *pkcs11ha.Policy, _ timing) time.Duration { return 2*p.EWMADecay.D() + slack },
			run: func(e *env) {
				d := e.dev("eastus-1")
				e.inject("eastus-1 slow (4ms each way)", false, []string{"eastus-1"}, func() error { return d.SetDelay(4*time.Millisecond, 4*time.Millisecond) })
				e.hold(e.tm.fault)
				e.remove("eastus-1 fast again", func() error { return d.SetDelay(0, 0) })
				e.recoverDevice("eastus-1")
			},
			check: func(e *env, ops []Op, _ Summary) {
				// Once the EWMA has seen eastus-1 slow (after 500 ms), it serves at most a small share.
				learnt := e.faultAt + 500*time.Millisecond
				n, slow := 0, 0
				for i := range ops {
					o := &ops[i]
					if o.Served() && o.Start >= learnt && o.Start < e.removedAt {
						n++
						if o.Device == "eastus-1" {
							slow++
						}
					}
				}
				e.logf("while slow: eastus-1 served %d of %d calls (%.1f%%)", slow, n, 100*float64(slow)/float64(max(n, 1)))
				if n == 0 {
					e.t.Errorf("no call was served while eastus-1 was slow")
				}
				// How fast the EWMA tells 25 ms from a healthy device's latency depends on the host's load: a
				// bound (failover's unit tests prove with fake latencies that P2C sheds the slower device).
				e.bound(float64(slow) <= 0.15*float64(n), "INVARIANT slow device: eastus-1 served %d of %d calls while slow, want at most 15%%", slow, n)
			},
		},
		{
			name: "restart", policy: fastPolicy, p99: p99Local, recovery: afterFirstOffence, singleDevice: true,
			run: func(e *env) {
				d := e.dev("eastus-1")
				var restarted time.Duration
				e.inject("eastus-1 restarting", false, []string{"eastus-1"}, func() error {
					err := d.Restart(e.ctx)
					restarted = e.rec.Now()
					return err
				})
				e.remove("eastus-1 restarted", func() error {
					e.logf("restart took %v", (restarted - e.faultAt).Round(time.Millisecond))
					return nil
				})
				e.recoverDevice("eastus-1")
			},
		},
		{
			// Connection reset: the relay closes eastus-1's connections once (the server lives on); p11-kit-client
			// then fails every call on that instance until the library re-initialises it.
			name: "reset", policy: fastPolicy, p99: p99Local, recovery: afterFirstOffence, singleDevice: true,
			run: func(e *env) {
				d := e.dev("eastus-1")
				worst := time.Duration(0)
				for i := range e.tm.resets {
					if i > 0 {
						e.hold(e.tm.fault / time.Duration(e.tm.resets))
					}
					e.inject(fmt.Sprintf("eastus-1 reset #%d", i+1), false, []string{"eastus-1"}, d.Reset)
					e.remove(fmt.Sprintf("after reset #%d", i+1), func() error { return nil })
					if !e.waitRecovered("eastus-1 serves again", servedBy("eastus-1")) {
						return
					}
					worst = max(worst, e.recovery)
					e.healthy(fmt.Sprintf("recovered #%d", i+1))
				}
				e.recovery = worst
				e.waitRotation("eastus-1", nil)
				e.hold(e.tm.tail)
			},
		},
		{
			name: "flapping", policy: fastPolicy, p99: p99Local, recovery: afterFlapping, singleDevice: true,
			run: func(e *env) {
				d := e.dev("eastus-1")
				e.inject(fmt.Sprintf("eastus-1 flapping x%d", e.tm.flapCycles), false, []string{"eastus-1"}, func() error { return nil })
				for i := range e.tm.flapCycles {
					if err := d.Kill(); err != nil {
						e.t.Fatalf("cycle %d: kill: %v", i, err)
					}
					e.hold(time.Second)
					if err := d.Start(e.ctx); err != nil {
						e.t.Fatalf("cycle %d: start: %v", i, err)
					}
					if i < e.tm.flapCycles-1 {
						e.hold(time.Second)
					}
				}
				e.remove("flapping over", func() error { return nil })
				e.recoverDevice("eastus-1")
			},
		},
		{
			// The local region is cut off (the relays drop every connection): traffic moves to DR, then back.
			// Recovery: failback, the first local call after which no call goes to DR any more.
			name: "local-region-down", policy: fastPolicy, p99: p99DR, recovery: afterFirstOffence,
			run: func(e *env) {
				locals := e.localDevices()
				e.inject("local region down", false, locals, func() error { return e.each(locals, (*softhsmtest.Device).Down) })
				e.hold(e.tm.fault)
				e.remove("local region back", func() error { return e.each(locals, (*softhsmtest.Device).Pass) })
				e.failback()
			},
			check: func(e *env, ops []Op, _ Summary) {
				n, dr := 0, 0
				for i := range ops {
					o := &ops[i]
					if o.Served() && o.Start >= e.faultAt+time.Second && o.Start < e.removedAt {
						n++
						if e.isDR(o.Device) {
							dr++
						}
					}
				}
				e.logf("while the local region was down: %d of %d calls served by DR", dr, n)
				if n == 0 || dr != n {
					e.t.Errorf("local region down: %d of %d calls served by DR, want all of them", dr, n)
				}
			},
		},
		{
			// The DR region is cut off: no effect at all on traffic (the local tier is healthy all along, so the
			// whole run is a healthy phase). Recovery: both DR devices seen down, then up again (no traffic goes
			// there to show more).
			name: "dr-region-down", policy: fastPolicy, p99: p99Local, singleDevice: true,
			recovery: func(p *pkcs11ha.Policy, _ timing) time.Duration {
				return time.Duration(1.15*float64(p.Health.Interval.D())) + probeUp(p) + slack
			},
			run: func(e *env) {
				drs := []string{"westus-1", "westus-2"}
				e.inject("DR region down", true, drs, func() error { return e.each(drs, (*softhsmtest.Device).Down) })
				e.hold(e.tm.fault)
				// The probes must notice (a function of the probe schedule: a bound on the fault's length); in the
				// short form the fault is held until they do.
				drDown := func() int {
					down := 0
					for _, st := range e.cl.Status() {
						if slices.Contains(drs, st.Name) && st.State != "up" {
							down++
						}
					}
					return down
				}
				down := drDown()
				e.logf("%d of 2 DR devices seen not up by the end of the fault", down)
				e.bound(down == 2, "the DR devices' probes did not notice the DR region down within %v", e.tm.fault)
				for waited := time.Duration(0); drDown() < 2 && !e.tm.long; waited += 50 * time.Millisecond {
					if waited > livenessWait {
						e.t.Errorf("the DR devices' probes did not notice the DR region down within %v", e.tm.fault+livenessWait)
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				e.removeAs("DR region back", true, func() error { return e.each(drs, (*softhsmtest.Device).Pass) })
				back := e.rec.Origin().Add(e.removedAt)
				e.waitStatus("both DR devices up again", func(st []pkcs11ha.DeviceStatus) bool {
					for _, s := range st {
						if slices.Contains(drs, s.Name) && (s.State != "up" || s.Since.Before(back)) {
							return false
						}
					}
					return true
				})
				e.hold(e.tm.tail)
			},
		},
		badSignatureScenario(),
		keyFaultScenario("key-missing", "missing", func(d *softhsmtest.DeviceSpec) { d.MissingKeys = []string{"ec-key"} }),
		withOddDeviceFirst(keyFaultScenario("key-different", "different public key", func(d *softhsmtest.DeviceSpec) { d.DifferentKeys = []string{"ec-key"} })),
		{
			// eastus-1's payments token has another PIN than the config says. Exactly one C_Login is ever tried
			// there (lockout), even across a restart and re-initialisation; eastus-1 keeps serving ledger.
			name: "wrong-pin", policy: defaultPolicy, p99: p99Local, recovery: afterFirstOffence, singleDevice: true,
			devices: func() []softhsmtest.DeviceSpec {
				ds := softhsmtest.DefaultTopology(10 * time.Millisecond)
				ds[0].PINOverride = map[string]string{"payments": "99999"}
				return ds
			},
			run: func(e *env) {
				if n := loginAttempts(e.cl, "eastus-1", "payments"); n != 1 {
					e.t.Errorf("INVARIANT login attempts with the wrong PIN after Open: %d, want 1", n)
				}
				e.restartVictim("eastus-1", "ledger/ec-key")
			},
			check: func(e *env, ops []Op, _ Summary) {
				if n := loginAttempts(e.cl, "eastus-1", "payments"); n != 1 {
					e.t.Errorf("INVARIANT login attempts with the wrong PIN: %d, want exactly 1 (lockout)", n)
				}
				e.logf("C_Login attempts on eastus-1: payments %d (wrong PIN), ledger %d", loginAttempts(e.cl, "eastus-1", "payments"),
					loginAttempts(e.cl, "eastus-1", "ledger"))
				e.keyServedBy(ops, "payments/", "eastus-1", false)
				e.keyServedBy(ops, "ledger/", "eastus-1", true)
				st := e.cl.Status()[0]
				if st.Name != "eastus-1" || st.Partitions[0].Open || !strings.Contains(st.Partitions[0].Error, "CKR_PIN_INCORRECT") {
					e.t.Errorf("status of eastus-1 does not show payments closed for CKR_PIN_INCORRECT: %+v", st.Partitions)
				}
			},
		},
		{
			// Every device killed: calls fail with ErrNoDevice, quickly and within their deadline; then the devices
			// return and service resumes without restarting the process.
			name: "all-down", policy: fastPolicy, p99: p99Local, recovery: afterFirstOffence,
			run: func(e *env) {
				all := []string{"eastus-1", "eastus-2", "westus-1", "westus-2"}
				e.inject("all devices killed", false, all, func() error { return e.each(all, (*softhsmtest.Device).Kill) })
				e.allowFrom = e.faultAt
				e.allowTo = time.Duration(1 << 62)
				e.hold(e.tm.fault)
				e.remove("all devices restarted", func() error {
					return e.each(all, func(d *softhsmtest.Device) error { return d.Start(e.ctx) })
				})
				ok := e.waitRecovered("a call succeeds again", func(o *Op) bool { return o.Served() })
				// Calls that started before the first success may still have failed; none after it.
				e.allowTo = e.removedAt + max(e.recovery, 0)
				if ok {
					e.waitBothLocal()
				}
				e.healthy("recovered")
				e.hold(e.tm.tail)
			},
			check: func(e *env, ops []Op, _ Summary) {
				failed := 0
				for i := range ops {
					if !ops[i].Served() && ops[i].Start >= e.faultAt && ops[i].Start < e.removedAt {
						failed++
					}
				}
				if failed == 0 {
					e.t.Errorf("all devices down: no call failed, so the fault did not happen")
				}
			},
		},
	}
}

// keyFaultScenario: eastus-1 lacks ec-key, or holds another key under its label, in both partitions. It must
// never serve that key (a signature from it would not verify), still serve rsa-key, and keep that after a
// restart and re-initialisation.
func keyFaultScenario(name, reason string, fault func(*softhsmtest.DeviceSpec)) scenario {
	return scenario{
		name: name, policy: defaultPolicy, p99: p99Local, recovery: afterFirstOffence, singleDevice: true,
		devices: func() []softhsmtest.DeviceSpec {
			ds := softhsmtest.DefaultTopology(10 * time.Millisecond)
			fault(&ds[0])
			return ds
		},
		run: func(e *env) {
			e.checkExcluded("eastus-1", reason)
			e.restartVictim("eastus-1", "payments/rsa-key")
			e.checkExcluded("eastus-1", reason)
		},
		check: func(e *env, ops []Op, _ Summary) {
			e.keyServedBy(ops, "/ec-key", "eastus-1", false)
			e.keyServedBy(ops, "payments/rsa-key", "eastus-1", true)
		},
	}
}

// withOddDeviceFirst makes the device with the different key (eastus-1) the first to finish opening: the
// other local device answers 3 ms late each way during Open (the DR devices already are 10 ms away). Which
// device reports first is otherwise a race, and the reference key must be the majority's whatever the order.
func withOddDeviceFirst(sc scenario) scenario {
	sc.beforeOpen = func(e *env) func() {
		d := e.dev("eastus-2")
		if err := d.SetDelay(3*time.Millisecond, 3*time.Millisecond); err != nil {
			e.t.Fatal(err)
		}
		return func() {
			if err := d.SetDelay(0, 0); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	return sc
}

// recoverDevice waits until dev serves again and is back in rotation, then runs the healthy tail.
func (e *env) recoverDevice(dev string) {
	if e.waitRecovered(dev+" serves again", servedBy(dev)) {
		e.waitRotation(dev, nil)
	}
	e.healthy("recovered")
	e.hold(e.tm.tail)
}

// rotationShare is the share of the local calls a recovered device must take again (two local devices:
// about half when both are healthy).
const rotationShare = 0.2

// waitRotation waits until dev serves at least rotationShare of the local calls it can serve (only) in a
// 1 s window, and records the end of the first such window after the fault was removed as the rotation time.
func (e *env) waitRotation(dev string, only func(*Op) bool) {
	e.t.Helper()
	const window = time.Second
	limit := e.waitLimit()
	next := e.removedAt + window
	for {
		now := e.rec.Now()
		if now >= next {
			ops := e.rec.Ops()
			for end := next; end <= now; end += 100 * time.Millisecond {
				n, k := 0, 0
				for i := range ops {
					o := &ops[i]
					if o.Served() && o.Start >= end-window && o.Start < end && !e.isDR(o.Device) && (only == nil || only(o)) {
						n++
						if o.Device == dev {
							k++
						}
					}
				}
				if n > 0 && float64(k) >= rotationShare*float64(n) {
					e.rotation = end - e.removedAt
					e.logf("back in rotation: %s served %d of %d local calls in the 1s window ending %v after the fault was removed", dev, k, n, e.rotation.Round(time.Millisecond))
					e.bound(e.rotation <= e.recBound, "INVARIANT rotation: %s took %v to serve %.0f%% of the local calls again, bound %v\n%s",
						dev, e.rotation.Round(time.Millisecond), 100*rotationShare, e.recBound, e.statusTable())
					return
				}
				next = end + 100*time.Millisecond
			}
		}
		if now-e.removedAt > limit {
			e.rotation, e.rotationNote = -1, "> "+ms(limit)
			e.t.Errorf("INVARIANT rotation: %s did not serve %.0f%% of the local calls of any 1s window within %v of the fault's removal (bound %v)\n%s",
				dev, 100*rotationShare, limit, e.recBound, e.statusTable())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// restartVictim restarts dev in the middle of a static fault and waits until it serves key again.
func (e *env) restartVictim(dev, key string) {
	d := e.dev(dev)
	e.inject(dev+" restarting", false, []string{dev}, func() error { return d.Restart(e.ctx) })
	e.remove(dev+" restarted", func() error { return nil })
	isKey := func(o *Op) bool { return strings.HasPrefix(e.keys[o.Task], key) }
	if e.waitRecovered(dev+" serves "+key+" again", func(o *Op) bool { return o.Served() && o.Device == dev && isKey(o) }) {
		e.waitRotation(dev, isKey)
	}
	e.healthy("recovered")
	e.hold(e.tm.tail)
}

// keyServedBy asserts whether dev served calls for keys matching sub (a "partition/label" substring).
func (e *env) keyServedBy(ops []Op, sub, dev string, want bool) {
	n := 0
	for i := range ops {
		o := &ops[i]
		if o.Served() && o.Device == dev && strings.Contains(e.keys[o.Task], sub) {
			n++
		}
	}
	switch {
	case want && n == 0:
		e.t.Errorf("%s served no call for %s: it should still serve the keys it holds", dev, sub)
	case !want && n > 0:
		e.t.Errorf("INVARIANT %s served %d calls for %s, which it must not serve", dev, n, sub)
	}
	e.logf("%s served %d calls for %s", dev, n, sub)
}

func (e *env) checkExcluded(dev, reason string) {
	for _, st := range e.cl.Status() {
		if st.Name != dev {
			continue
		}
		for _, k := range []string{"payments/ec-key", "ledger/ec-key"} {
			if !strings.Contains(st.ExcludedKeys[k], reason) {
				e.t.Errorf("status of %s: excluded[%s] = %q, want it to say %q", dev, k, st.ExcludedKeys[k], reason)
			}
		}
	}
}

// each runs fn on the named devices concurrently.
func (e *env) each(names []string, fn func(*softhsmtest.Device) error) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		d := e.dev(n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(d)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// waitStatus polls Cluster.Status until pred holds, and records the recovery time.
func (e *env) waitStatus(what string, pred func([]pkcs11ha.DeviceStatus) bool) {
	e.t.Helper()
	limit := e.waitLimit()
	for {
		if pred(e.cl.Status()) {
			e.setRecovery(what, e.rec.Now()-e.removedAt)
			return
		}
		if e.rec.Now()-e.removedAt > limit {
			e.recovery, e.recoveryNote = -1, "> "+ms(limit)
			e.t.Errorf("recovery: %s did not happen within %v (bound %v)\n%s", what, limit, e.recBound, e.statusTable())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failback waits for the local tier to serve again, then for both local devices, and measures the recovery
// as the first local call after which no call went to DR.
func (e *env) failback() {
	e.t.Helper()
	locals := e.localDevices()
	if !e.waitRecovered("the local tier serves again", servedBy(locals...)) {
		return
	}
	e.waitBothLocal()
	e.hold(500 * time.Millisecond)
	ops := e.rec.Ops()
	lastDR := time.Duration(-1)
	for i := range ops {
		if o := &ops[i]; o.Served() && o.Start >= e.removedAt && e.isDR(o.Device) {
			lastDR = max(lastDR, o.Start)
		}
	}
	back := time.Duration(-1)
	for i := range ops {
		if o := &ops[i]; o.Served() && o.Start > lastDR && o.Start >= e.removedAt && slices.Contains(locals, o.Device) {
			if back < 0 || o.End() < back {
				back = o.End()
			}
		}
	}
	e.setRecovery("failback (first local call after the last DR one)", back-e.removedAt)
	e.healthy("failed back")
	e.hold(e.tm.tail)
}

// waitBothLocal waits (bounded) until each local device has served a call since the fault was removed.
func (e *env) waitBothLocal() {
	for _, d := range e.localDevices() {
		ctx, cancel := context.WithTimeout(context.Background(), e.waitLimit())
		from := e.removedAt
		op, ok := e.rec.WaitFor(ctx, e.removedIdx, func(o *Op) bool { return o.Start >= from && servedBy(d)(o) })
		cancel()
		if !ok {
			e.t.Errorf("%s served no call after the fault was removed\n%s", d, e.statusTable())
			continue
		}
		e.logf("%s serves again %v after the fault was removed", d, (op.End() - e.removedAt).Round(time.Millisecond))
	}
}
