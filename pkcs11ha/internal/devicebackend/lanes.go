package devicebackend

import (
	"context"
	"path/filepath"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
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
func lanesOf(d DeviceSpec, n int) int {
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
func (d *Device) owner() *Device {
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
func (d *Device) addLanes(n int) error {
	if n <= 1 {
		return nil
	}
	d.Lanes = []*Device{d}
	d.laneFree = make(chan struct{}, n)
	for l := 1; l < n; l++ {
		h, err := modules.acquire(d.cfg.Module, d.cfg.ModuleEnv, l)
		if err != nil {
			return err
		}
		h.solo = true
		ld := &Device{idx: d.idx, Name: d.Name, cfg: d.cfg, set: d.set, Mod: h, log: d.log, home: d}
		ld.h.set(nil, d.h.onDown) // a lane's down is its device's; d's hooks are read at each call
		for _, p := range d.Parts {
			ld.Parts = append(ld.Parts, &devPartition{dev: ld, Cfg: p.Cfg, pin: p.pin, home: p})
		}
		d.Lanes = append(d.Lanes, ld)
	}
	return nil
}

// laneCounts is how many lanes d has (0 without lanes) and how many are open on their live instance for
// every partition that could work (PIN accepted): lanes still opening, or found down and waiting for a
// probe to re-initialise them, are not.
func (d *Device) laneCounts() (total, open int) {
	for _, l := range d.Lanes {
		serves := true
		for _, p := range l.Parts {
			serves = serves && (p.onLiveInstance() || p.owner().credFatal.Load() != nil)
		}
		if serves {
			open++
		}
	}
	return len(d.Lanes), open
}

// LaneList is the device's lanes, lane 0 first; just the device when it has none.
func (d *Device) LaneList() []*Device {
	if d.Lanes == nil {
		return []*Device{d}
	}
	return d.Lanes
}

// RecoverIfNeeded re-initialises (or reopens) the device when it was seen down or has a partition that
// should be open: lane 0 on the probe's time, as a device without lanes (its verdict is the device's),
// then, in the background, the other lanes, so that a slow or failing lane never fails a probe nor slows
// Open down (lanes 1.. are first opened by the probe that follows Open). One lane at a time: SoftHSM behind
// p11-kit server (a process per connection over one token directory) fails logins and token lookups when
// several of its processes start at once; and only once lane 0 has logged in, so that a rejected PIN is
// known and never tried on another lane. A lane that fails is tried again at the next probe.
func (d *Device) RecoverIfNeeded(ctx context.Context, othersServing bool) error {
	need := func(l *Device) bool { return l.needInit.Load() || l.AnyPartitionClosed() }
	var err error
	if need(d) {
		err = d.recoverDevice(ctx, othersServing)
	}
	if err != nil {
		return err // lane 0 first
	}
	lanes := d.LaneList()[1:]
	pending := false
	for _, l := range lanes {
		pending = pending || need(l)
	}
	if pending && d.Recovering.CompareAndSwap(false, true) {
		go func() {
			defer d.Recovering.Store(false)
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
func (d *Device) lanesDown() {
	o := d.owner()
	for _, l := range o.Lanes {
		l.needInit.Store(true)
		if in := l.Mod.Current(); in != nil && !l.Mod.shared() {
			in.Broken.Store(true)
		}
	}
}

// run executes op for partition p on one of its device's lanes (on the device itself when it has none),
// holding that lane's instance for the call.
func (p *devPartition) run(ctx context.Context, op *Op) ([]byte, error) {
	d := p.dev
	if d.Lanes == nil {
		return p.runHere(ctx, op)
	}
	pi := 0
	for i, q := range d.Parts {
		if q == p {
			pi = i
		}
	}
	l, in, err := d.takeLane(ctx, pi)
	if err != nil {
		return nil, err
	}
	defer d.giveLane(l, in)
	return l.Parts[pi].runHere(ctx, op)
}

// laneWait bounds one wait for a free lane: a lane whose call is stuck in an instance that was retired
// since becomes free without a signal.
const laneWait = 5 * time.Millisecond

// takeLane picks the instance for a call on partition pi: a free lane among 1.. (reserved for the call),
// else lane 0, which carries any number of calls, as a device without lanes does: while lanes 1.. are
// still opening, and when they are all busy. Only when lane 0 cannot serve either does the call wait for
// a lane; with none open at all it is a device-down error.
func (d *Device) takeLane(ctx context.Context, pi int) (*Device, *Instance, error) {
	n := len(d.Lanes) - 1
	for {
		start := int(d.laneNext.Add(1))
		usable := false
		for k := range n {
			l := d.Lanes[1+(start+k)%n]
			in := l.Mod.Current()
			if in == nil || l.Parts[pi].St.Load() == nil {
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
		if d.Mod.Current() != nil && d.Parts[pi].St.Load() != nil {
			return d, nil, nil
		}
		if !usable {
			return nil, nil, errclass.DownErr(d.Name, d.Parts[pi].Cfg.Name, errclass.OpOpenSession, "no module instance of the device is open")
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
func (d *Device) giveLane(l *Device, in *Instance) {
	if in != nil && l.laneBusy.CompareAndSwap(in, nil) {
		select {
		case d.laneFree <- struct{}{}:
		default:
		}
	}
}

// closeLanes releases lanes 1.. (lane 0 is the device's own module reference).
func (d *Device) closeLanes(timeout time.Duration) {
	for _, l := range d.LaneList()[1:] {
		modules.release(l.Mod, timeout)
	}
}

// reinitCount and retiredCount sum the module accounts of every lane, for Status.
func (d *Device) reinitCount() int64 {
	n := int64(0)
	for _, l := range d.LaneList() {
		n += l.Mod.reinits.Load()
	}
	return n
}

func (d *Device) RetiredCount() int64 {
	n := int64(0)
	for _, l := range d.LaneList() {
		n += l.Mod.retired.Load()
	}
	return n
}
