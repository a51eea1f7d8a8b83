package pkcs11ha

import (
	"context"
	"path/filepath"
	"time"
)

// Lanes: a small pool of module instances per device, each carrying one call at a time.
//
// p11-kit-client 0.24 strands calls for good when its server dies with several calls in flight on one
// instance (docs/ARCHITECTURE.md, "Facts about SoftHSM and p11-kit"): the threads sharing its socket wait for a pending
// reply header to change, and one whose connection dies between a header and its body leaves that header
// pending for ever. With one call in flight per instance nobody waits on another's reply (measured:
// TestStrandingPerKill in lab/chaos).
// Every load of p11-kit-client.so is an instance of its own (its own connection, and on the server side its
// own p11-kit-remote process), so a device whose module is p11-kit-client.so gets
// policy.p11kit_client_instances of them: its lanes. Lane 0 is the device itself and carries any number of
// calls, as before: it is what serves while the other lanes open (one at a time, in the background: see
// recoverIfNeeded) and when they are all busy, so the device's capacity and its readiness after Open or a
// re-init are those of one instance. Lanes 1.. carry one call each and take every call they can; they are
// devices of their own (module handle, partitions, sessions, login, key handles, recovery) sharing the
// device's name, health monitor, breaker, PIN verdict, error and stuck-call accounts. Other modules
// (SoftHSM in-process, a Luna client) keep one instance that carries every call.

// p11kitClient is the file name of the module that gets lanes.
const p11kitClient = "p11-kit-client.so"

// lanesOf is how many instances device d gets under policy.p11kit_client_instances n.
func lanesOf(d deviceSpec, n int) int {
	if n <= 1 || !isP11KitClient(d.Module) {
		return 1
	}
	return n
}

// isP11KitClient reports whether module is p11-kit-client.so, by name or through a symlink.
func isP11KitClient(module string) bool {
	if filepath.Base(module) == p11kitClient {
		return true
	}
	p, err := filepath.EvalSymlinks(module)
	return err == nil && filepath.Base(p) == p11kitClient
}

// owner is the device a lane belongs to (itself for lane 0 and for devices without lanes).
func (d *device) owner() *device {
	if d != nil && d.home != nil {
		return d.home
	}
	return d
}

// owner is the partition of the owning device: the one holding the PIN verdict and the login count.
func (p *devPartition) owner() *devPartition {
	if p.home != nil {
		return p.home
	}
	return p
}

// addLanes gives d lanes 1..n-1 (n <= 1: none). Their modules are loaded when d opens.
func (d *device) addLanes(n int) error {
	if n <= 1 {
		return nil
	}
	d.lanes = []*device{d}
	d.laneFree = make(chan struct{}, n)
	for l := 1; l < n; l++ {
		h, err := modules.acquire(d.cfg.Module, d.cfg.ModuleEnv, l)
		if err != nil {
			return err
		}
		h.solo = true
		ld := &device{idx: d.idx, name: d.name, cfg: d.cfg, set: d.set, mod: h, log: d.log, home: d}
		ld.onDown = func(reason string) {
			if d.onDown != nil {
				d.onDown(reason)
			}
		}
		for _, p := range d.parts {
			ld.parts = append(ld.parts, &devPartition{dev: ld, cfg: p.cfg, pin: p.pin, home: p})
		}
		d.lanes = append(d.lanes, ld)
	}
	return nil
}

// laneList is the device's lanes, lane 0 first; just the device when it has none.
func (d *device) laneList() []*device {
	if d.lanes == nil {
		return []*device{d}
	}
	return d.lanes
}

// recoverIfNeeded re-initialises (or reopens) the device when it was seen down or has a partition that
// should be open: lane 0 on the probe's time, as a device without lanes (its verdict is the device's),
// then, in the background, the other lanes, so that a slow or failing lane never fails a probe nor slows
// Open down (lanes 1.. are first opened by the probe that follows Open). One lane at a time: SoftHSM behind
// p11-kit server (a process per connection over one token directory) fails logins and token lookups when
// several of its processes start at once; and only once lane 0 has logged in, so that a rejected PIN is
// known and never tried on another lane. A lane that fails is tried again at the next probe.
func (d *device) recoverIfNeeded(ctx context.Context, othersServing bool) error {
	need := func(l *device) bool { return l.needInit.Load() || l.anyPartitionClosed() }
	var err error
	if need(d) {
		err = d.recoverDevice(ctx, othersServing)
	}
	if err != nil {
		return err // lane 0 first
	}
	lanes := d.laneList()[1:]
	pending := false
	for _, l := range lanes {
		pending = pending || need(l)
	}
	if pending && d.recovering.CompareAndSwap(false, true) {
		go func() {
			defer d.recovering.Store(false)
			for _, l := range lanes {
				if need(l) {
					lctx, cancel := context.WithTimeout(context.Background(), d.set.InitTimeout+d.set.ReinitGrace)
					_ = l.recoverDevice(lctx, othersServing)
					cancel()
				}
			}
		}()
	}
	return nil
}

// lanesDown: a device error on one lane is the device's (a killed server, a reset network): every lane
// stops taking calls and is re-initialised by the next probe.
func (d *device) lanesDown() {
	o := d.owner()
	for _, l := range o.lanes {
		l.needInit.Store(true)
		if in := l.mod.current(); in != nil && !l.mod.shared() {
			in.broken.Store(true)
		}
	}
}

// run executes op for partition p on one of its device's lanes (on the device itself when it has none),
// holding that lane's instance for the call.
func (p *devPartition) run(ctx context.Context, op *deviceOp) ([]byte, error) {
	d := p.dev
	if d.lanes == nil {
		return p.runHere(ctx, op)
	}
	pi := 0
	for i, q := range d.parts {
		if q == p {
			pi = i
		}
	}
	l, in, err := d.takeLane(ctx, pi)
	if err != nil {
		return nil, err
	}
	defer d.giveLane(l, in)
	return l.parts[pi].runHere(ctx, op)
}

// laneWait bounds one wait for a free lane: a lane whose call is stuck in an instance that was retired
// since becomes free without a signal.
const laneWait = 5 * time.Millisecond

// takeLane picks the instance for a call on partition pi: a free lane among 1.. (reserved for the call),
// else lane 0, which carries any number of calls, as a device without lanes does: while lanes 1.. are
// still opening, and when they are all busy. Only when lane 0 cannot serve either does the call wait for
// a lane; with none open at all it is a device-down error.
func (d *device) takeLane(ctx context.Context, pi int) (*device, *instance, error) {
	n := len(d.lanes) - 1
	for {
		start := int(d.laneNext.Add(1))
		usable := false
		for k := range n {
			l := d.lanes[1+(start+k)%n]
			in := l.mod.current()
			if in == nil || l.parts[pi].st.Load() == nil {
				continue
			}
			usable = true
			h := l.laneBusy.Load()
			// Free: no call, or the call of an instance the lane has since replaced (stuck in it, or still
			// finishing there after a re-init).
			if h != in && l.laneBusy.CompareAndSwap(h, in) {
				return l, in, nil
			}
		}
		if d.mod.current() != nil && d.parts[pi].st.Load() != nil {
			return d, nil, nil
		}
		if !usable {
			return nil, nil, downErr(d.name, d.parts[pi].cfg.Name, opOpenSession, "no module instance of the device is open")
		}
		t := time.NewTimer(laneWait)
		select {
		case <-d.laneFree:
			t.Stop()
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		}
	}
}

// giveLane frees a lane taken for instance in (unless a fresh instance took the lane over meanwhile);
// lane 0 is never reserved (in == nil).
func (d *device) giveLane(l *device, in *instance) {
	if in != nil && l.laneBusy.CompareAndSwap(in, nil) {
		select {
		case d.laneFree <- struct{}{}:
		default:
		}
	}
}

// closeLanes releases lanes 1.. (lane 0 is the device's own module reference).
func (d *device) closeLanes(timeout time.Duration) {
	for _, l := range d.laneList()[1:] {
		modules.release(l.mod, timeout)
	}
}

// reinitCount and retiredCount sum the module accounts of every lane, for Status.
func (d *device) reinitCount() int64 {
	n := int64(0)
	for _, l := range d.laneList() {
		n += l.mod.reinits.Load()
	}
	return n
}

func (d *device) retiredCount() int64 {
	n := int64(0)
	for _, l := range d.laneList() {
		n += l.mod.retired.Load()
	}
	return n
}
