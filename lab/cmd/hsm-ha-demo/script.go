package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// failbackTimeout bounds the wait for traffic to return to the local pair after the restore.
const failbackTimeout = 60 * time.Second

// script is the scripted failover: at one step kill eastus-1, at two steps pause eastus-2 (DR takes
// over), at three steps resume eastus-2 and restart eastus-1, then wait until the local pair serves all
// traffic again. Every step and every observed effect is one line with the failed operations so far.
func (d *demo) script(ctx context.Context) {
	step := d.opts.step
	e1, e2 := d.topo.Device("eastus-1"), d.topo.Device("eastus-2")
	if e1 == nil || e2 == nil {
		d.failScript("the topology has no eastus-1 and eastus-2")
		return
	}

	if !d.sleepUntil(ctx, step) {
		return
	}
	d.stepEvent("step 1/4: kill eastus-1 (SIGKILL to its p11-kit server, pid %d): eastus-2 should carry the load, DR stay idle", e1.PID())
	d.mark("1: kill eastus-1")
	at := time.Now()
	if err := e1.Kill(); err != nil {
		d.failScript(err.Error())
		d.stepEvent("  killing eastus-1 failed: %v", err)
		return
	}
	d.observe(ctx, at, d.t0.Add(2*step), 500*time.Millisecond, "eastus-2 alone serves the traffic", func(w map[string]int64) bool {
		return w["eastus-1"] == 0 && w["eastus-2"] > 0 && drOps(w) == 0
	})

	if !d.sleepUntil(ctx, 2*step) {
		return
	}
	d.stepEvent("step 2/4: pause eastus-2 (SIGSTOP to pid %d: a hung HSM, its calls never return): DR (westus) should take over", e2.PID())
	d.mark("2: pause eastus-2 (hung)")
	at = time.Now()
	if err := e2.Pause(); err != nil {
		d.failScript(err.Error())
		d.stepEvent("  pausing eastus-2 failed: %v", err)
		return
	}
	d.bandStart(regionOutBand)
	d.observe(ctx, at, d.t0.Add(3*step), 500*time.Millisecond, "DR (westus) serves all the traffic", func(w map[string]int64) bool {
		return w["eastus-1"] == 0 && w["eastus-2"] == 0 && drOps(w) > 0
	})

	if !d.sleepUntil(ctx, 3*step) {
		return
	}
	d.stepEvent("step 3/4: resume eastus-2 (SIGCONT) and restart eastus-1: traffic should return to the local pair")
	d.mark("3: resume eastus-2, restart eastus-1")
	at = time.Now()
	if err := e2.Resume(); err != nil {
		d.failScript(err.Error())
		d.stepEvent("  resuming eastus-2 failed: %v", err)
		return
	}
	d.bandEnd(regionOutBand)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := e1.Restart(rctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			d.failScript(err.Error())
		}
		d.stepEvent("  restarting eastus-1 failed: %v", err)
		return
	}
	d.stepEvent("  eastus-2 resumed; eastus-1 restarted in %.1fs, new p11-kit server pid %d", time.Since(at).Seconds(), e1.PID())

	if !d.awaitFailback(ctx, at) {
		return
	}
	total, failed, _ := d.load.totals()
	end := "Ctrl-C to stop"
	if d.opts.duration > 0 {
		end = fmt.Sprintf("it stops at %v", d.opts.duration)
	}
	d.event("failover script done: %d failed of %d operations so far. The load goes on; %s.", failed, total, end)
}

// awaitFailback is step 4, the effect of the restore at time at: it waits until the local pair serves
// all traffic again and DR is idle, then until both local devices serve. It returns false when the script
// must stop (the failback did not happen in time, or the demo ends).
func (d *demo) awaitFailback(ctx context.Context, at time.Time) bool {
	deadline := time.Now().Add(failbackTimeout)
	both := false
	for {
		if w, _, span := d.load.window(time.Second); time.Since(at) >= time.Second && span >= 900*time.Millisecond &&
			drOps(w) == 0 && w["eastus-1"]+w["eastus-2"] > 0 {
			both = w["eastus-1"] > 0 && w["eastus-2"] > 0
			d.mark("4: back on the local pair")
			d.stepEvent("step 4/4: traffic is back on the local pair, DR idle (last second: %s), %.1fs after step 3",
				windowText(w), time.Since(at).Seconds())
			break
		}
		if time.Now().After(deadline) {
			w, _, _ := d.load.window(time.Second)
			why := fmt.Sprintf("traffic did not return to the local pair within %v (last second: %s)", failbackTimeout, windowText(w))
			d.failScript(why)
			d.stepEvent("step 4/4: %s", why)
			return false
		}
		if !sleepCtx(ctx, sampleEvery) {
			w, _, _ := d.load.window(time.Second)
			d.event("the demo ends before traffic is back on the local pair (last second: %s)", windowText(w))
			return false
		}
	}
	// Both local devices in rotation again (P2C on latency may keep one aside for a while).
	for !both {
		w, _, _ := d.load.window(time.Second)
		if w["eastus-1"] > 0 && w["eastus-2"] > 0 {
			d.stepEvent("  seen: eastus-1 and eastus-2 both serve again, %.1fs after step 3 (last second: %s)",
				time.Since(at).Seconds(), windowText(w))
			break
		}
		if time.Now().After(deadline) {
			d.stepEvent("  not seen within %v: both local devices serving (last second: %s)", failbackTimeout, windowText(w))
			break
		}
		if !sleepCtx(ctx, sampleEvery) {
			d.event("the demo ends before both local devices serve again (last second: %s)", windowText(w))
			return false
		}
	}
	return true
}

// observe waits (until the deadline) for pred to hold on the operations of the last window, counted
// only once a whole window has passed since the step, and prints what it saw.
func (d *demo) observe(ctx context.Context, since, deadline time.Time, window time.Duration, what string, pred func(map[string]int64) bool) {
	for {
		w, _, span := d.load.window(window)
		if time.Since(since) >= window && span >= window-sampleEvery && pred(w) {
			d.stepEvent("  seen: %s, %.1fs after the step (last %v: %s)", what, time.Since(since).Seconds(), window, windowText(w))
			return
		}
		if time.Now().After(deadline) {
			d.stepEvent("  not seen before the next step: %s (last %v: %s)", what, window, windowText(w))
			return
		}
		if !sleepCtx(ctx, sampleEvery) {
			return
		}
	}
}

// sleepCtx sleeps for d, or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// sleepUntil waits until the load has run for at, or ctx ends (false).
func (d *demo) sleepUntil(ctx context.Context, at time.Duration) bool {
	return sleepCtx(ctx, time.Until(d.t0.Add(at)))
}

func drOps(w map[string]int64) int64 {
	return w["westus-1"] + w["westus-2"]
}

func windowText(w map[string]int64) string {
	parts := make([]string, 0, len(w))
	for _, name := range []string{"eastus-1", "eastus-2", "westus-1", "westus-2"} {
		parts = append(parts, fmt.Sprintf("%s %d", name, w[name]))
	}
	return strings.Join(parts, ", ")
}
