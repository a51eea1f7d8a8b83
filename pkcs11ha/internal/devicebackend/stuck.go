package devicebackend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// Calls stuck in retired module instances (docs/ARCHITECTURE.md, "calls that never return").
//
// Every PKCS#11 call is registered on its instance while it runs. When a re-init retires an instance with
// calls still in it, those calls stop counting against their device: the router's attempts among them are
// disowned (no longer abandoned, no longer holding capacity, so a device that serves again is not kept out
// of rotation by calls it will never see again), and they are accounted here instead, per device and in
// total, until they return, if ever. Each holds an OS thread (a goroutine blocked in cgo keeps its
// thread), so the total is capped by policy.max_stuck_calls: past it an instance is not retired, and its
// device stays down, saying why, rather than the process growing threads without limit.

// stuckTotal is the number of calls stuck in retired instances, process-wide: threads are a process
// resource, whichever cluster's devices hold them.
var stuckTotal atomic.Int64

// callRec is one call in flight on a module instance.
type callRec struct {
	dev     *Device          // the device the call is for; nil for module-level calls
	attempt failover.Attempt // the router's attempt the call runs under; nil for probes and opens
	stuck   bool             // its instance was retired while it ran; guarded by callSet.mu
	prev    *callRec
	next    *callRec
}

// callSet is the calls in flight on one instance: an intrusive list, so registering a call costs one
// small allocation and no map operation.
type callSet struct {
	mu   sync.Mutex
	head callRec // sentinel; the list is circular once initialised
}

// begin registers a call on the instance for device d (nil for module-level calls); it fails once the
// instance is broken or retired. ctx is the call's context: when it is a router attempt's, the attempt can
// be disowned if the call gets stuck in a retired instance. Every successful begin needs its end.
func (in *Instance) begin(ctx context.Context, d *Device) (*callRec, bool) {
	if in.Solo != nil {
		select {
		case in.Solo <- struct{}{}:
		case <-ctx.Done():
			return nil, false
		}
	}
	// In-flight first, then the check: re-init sets broken, then reads in-flight, so one of them sees the
	// other and an instance is never finalised under a call.
	in.Inflight.Add(1)
	rec := &callRec{dev: d.owner(), attempt: failover.AttemptOf(ctx)}
	s := &in.calls
	s.mu.Lock()
	if in.Broken.Load() || in.retired.Load() {
		s.mu.Unlock()
		in.exit()
		in.unsolo()
		return nil, false
	}
	if s.head.next == nil {
		s.head.next, s.head.prev = &s.head, &s.head
	}
	rec.prev, rec.next = s.head.prev, &s.head
	s.head.prev.next = rec
	s.head.prev = rec
	s.mu.Unlock()
	return rec, true
}

// end unregisters a call; a stuck call that returns after all stops counting.
func (in *Instance) end(rec *callRec) {
	s := &in.calls
	s.mu.Lock()
	rec.prev.next, rec.next.prev = rec.next, rec.prev
	rec.prev, rec.next = nil, nil
	stuck := rec.stuck
	s.mu.Unlock()
	if stuck {
		stuckTotal.Add(-1)
		if rec.dev != nil {
			rec.dev.stuck.Add(-1)
		}
	}
	in.exit()
	in.unsolo()
}

// unsolo gives back the one-call token of a solo instance.
func (in *Instance) unsolo() {
	if in.Solo != nil {
		<-in.Solo
	}
}

// errStuckCap refuses a retirement that would take the process past policy.max_stuck_calls.
type errStuckCap struct {
	module         string
	inflight, have int64
	limit          int
}

func (e *errStuckCap) Error() string {
	return fmt.Sprintf("module %s: not retiring an instance with %d calls stuck in it: %d calls are already stuck in retired instances "+
		"(policy.max_stuck_calls %d, each holds an OS thread); the device stays down until they return or the process restarts",
		e.module, e.inflight, e.have, e.limit)
}

// retire retires in, whose calls outlived the re-init grace: it takes no call any more and is never
// finalised. Its calls are moved from their devices' books to the stuck-call account, unless that would
// exceed limit: then nothing changes and an error says why. Caller holds h.mu.
func (h *moduleHandle) retire(in *Instance, limit int, log *slog.Logger) error {
	s := &in.calls
	s.mu.Lock()
	n := int64(0)
	for r := s.head.next; r != nil && r != &s.head; r = r.next {
		n++
	}
	for { // reserve n under the cap: several lanes may retire at once
		have := stuckTotal.Load()
		if have+n > int64(limit) {
			s.mu.Unlock()
			return &errStuckCap{module: filepath.Base(h.path), inflight: n, have: have, limit: limit}
		}
		if stuckTotal.CompareAndSwap(have, have+n) {
			break
		}
	}
	in.retired.Store(true)
	perDev := map[*Device]int{}
	for r := s.head.next; r != nil && r != &s.head; r = r.next {
		r.stuck = true
		if r.dev != nil {
			r.dev.stuck.Add(1)
			perDev[r.dev]++
		}
		if r.attempt != nil {
			r.attempt.Disown()
		}
	}
	s.mu.Unlock()
	if log != nil {
		for d, k := range perDev {
			log.Warn("module instance retired with calls stuck in it; they no longer count against the device",
				"device", d.Name, "stuck_calls", k, "device_stuck_calls", d.stuck.Load(), "total_stuck_calls", stuckTotal.Load(), "max_stuck_calls", limit)
		}
	}
	return nil
}

// probeCall is a probe's C_GetTokenInfo that may still be blocked.
type probeCall struct {
	in       *Instance
	returned atomic.Bool
}

// probeToken runs a probe's C_GetTokenInfo without holding the probe past its deadline: a call that
// blocks (a paused server, a black-holed connection) is left running and the probe fails at its deadline.
// While it is blocked, later probes of the same instance fail at once instead of piling up threads; once
// that instance is broken or retired they go ahead, so a probe call stranded in a dead instance never
// keeps its device down (the monitor admits one probe at a time).
func (d *Device) probeToken(ctx context.Context, st *partState) error {
	in := st.in
	if pc := d.probeBlocked.Load(); pc != nil && pc.in == in && !pc.returned.Load() && !in.Broken.Load() && !in.retired.Load() {
		return &errclass.DeviceError{Device: d.Name, Op: errclass.OpTokenInfo, Class: errclass.ClassBusy,
			Err: errors.New("an earlier probe call is still blocked on this module instance")}
	}
	rec, ok := in.begin(ctx, d)
	if !ok {
		return errclass.DownErr(d.Name, "", errclass.OpTokenInfo, "module instance is re-initialising")
	}
	pc := &probeCall{in: in}
	done := make(chan error, 1)
	go func() {
		_, err := in.ctx.GetTokenInfo(st.slot)
		in.end(rec)
		pc.returned.Store(true)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		d.probeBlocked.Store(pc)
		return ctx.Err()
	}
}

// noteRecovery remembers whether the device's last (re)open was refused for the stuck-call cap, for Status,
// and logs the refusal once.
func (d *Device) noteRecovery(err error) {
	var ce *errStuckCap
	if !errors.As(err, &ce) {
		if err == nil {
			d.capRefusal.Store(nil)
		}
		return
	}
	msg := ce.Error()
	if old := d.capRefusal.Swap(&msg); old == nil && d.log != nil {
		d.log.Error("device stays down: retiring its module instance would exceed policy.max_stuck_calls",
			"device", d.Name, "calls_in_instance", ce.inflight, "total_stuck_calls", ce.have, "max_stuck_calls", ce.limit)
	}
}

// StuckTotal is the number of calls stuck in retired module instances, process-wide (Cluster.StuckCalls).
func StuckTotal() int64 { return stuckTotal.Load() }
