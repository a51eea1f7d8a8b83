package health_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	. "github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/health/fakeclock"
)

type change struct{ old, new Status }

var mt0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

const waitLong = 10 * time.Second // generous bound for things that happen "at once"; never reached when green

// harness drives a Monitor on a fake clock: Rand is fixed at 0.5, so every wait is exactly
// Interval/DownInterval unless a test says otherwise.
type harness struct {
	t       *testing.T
	clk     *fakeclock.Clock
	m       *Monitor
	events  chan string
	changes chan change
	outcome atomic.Pointer[error] // what the next probe returns
	calls   atomic.Int32          // probe invocations
	block   chan struct{}         // when non-nil, probes block on it (ignoring ctx, like cgo)
	entered chan struct{}         // one send per blocking probe, once it runs
	fn      ProbeFunc             // when set before Start, replaces the scripted probe
}

func newHarness(t *testing.T, cfg MonitorConfig) *harness {
	h := &harness{t: t, clk: fakeclock.New(mt0), events: make(chan string, 100), changes: make(chan change, 100),
		entered: make(chan struct{}, 100)}
	var ok error
	h.outcome.Store(&ok)
	cfg.Clock = h.clk
	if cfg.Rand == nil {
		cfg.Rand = func() float64 { return 0.5 }
	}
	user := cfg.OnChange
	cfg.OnChange = func(o, n Status) {
		select {
		case h.changes <- change{o, n}:
		default: // only the stress test makes more changes than fit; it checks them itself
		}
		if user != nil {
			user(o, n)
		}
	}
	m, err := NewMonitor(cfg, func(ctx context.Context) error {
		if h.fn != nil {
			return h.fn(ctx)
		}
		return h.probe(ctx)
	})
	require.NoError(t, err)
	h.m = m
	SetTestHook(h.m, func(ev string) { h.events <- ev })
	t.Cleanup(h.m.Stop)
	return h
}

func (h *harness) probe(ctx context.Context) error {
	h.calls.Add(1)
	if h.block != nil {
		h.entered <- struct{}{}
		<-h.block
	}
	return *h.outcome.Load()
}

func (h *harness) waitEntered() {
	h.t.Helper()
	select {
	case <-h.entered:
	case <-time.After(waitLong):
		h.t.Fatal("the probe never ran")
	}
}

func (h *harness) set(err error) { h.outcome.Store(&err) }

func (h *harness) blockUntil(n int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	require.NoError(h.t, h.clk.BlockUntilContext(ctx, n), "waiting for %d pending timers", n)
}

func (h *harness) event(want string) {
	h.t.Helper()
	select {
	case ev := <-h.events:
		require.Equal(h.t, want, ev)
	case <-time.After(waitLong):
		h.t.Fatalf("no %q event", want)
	}
}

// tick waits for the scheduler to sleep, moves time by d and waits for the probe outcome.
func (h *harness) tick(d time.Duration) Status {
	h.t.Helper()
	h.blockUntil(1)
	h.clk.Advance(d)
	h.event("probed")
	return h.m.Status()
}

func (h *harness) noChange() {
	h.t.Helper()
	select {
	case c := <-h.changes:
		h.t.Fatalf("unexpected change %v -> %v", c.old.State, c.new.State)
	default:
	}
}

func (h *harness) change(from, to State) change {
	h.t.Helper()
	select {
	case c := <-h.changes:
		require.Equal(h.t, from, c.old.State, "old state")
		require.Equal(h.t, to, c.new.State, "new state")
		return c
	case <-time.After(waitLong):
		h.t.Fatalf("no change %v -> %v", from, to)
		return change{}
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{StateUp: "up", StateDegraded: "degraded", StateDown: "down", State(7): "state(7)"} {
		require.Equal(t, want, s.String())
	}
}

func TestMonitorConfigResolve(t *testing.T) {
	c, err := MonitorConfig{}.Resolve()
	require.NoError(t, err)
	require.Equal(t, DefaultInterval, c.Interval)
	require.Equal(t, DefaultDownInterval, c.DownInterval)
	require.Equal(t, DefaultJitter, c.Jitter)
	require.Equal(t, DefaultProbeTimeout, c.Timeout)
	require.Equal(t, DefaultFallThreshold, c.FallThreshold)
	require.Equal(t, DefaultRiseThreshold, c.RiseThreshold)
	require.NotNil(t, c.Clock)
	require.NotNil(t, c.Rand)
	again, err := c.Resolve()
	require.NoError(t, err)
	require.Equal(t, c.Interval, again.Interval, "idempotent")

	none, err := MonitorConfig{Jitter: -1}.Resolve()
	require.NoError(t, err)
	require.Equal(t, -1.0, none.Jitter, "negative: no jitter, and stays so when resolved again")

	tests := []struct {
		name  string
		cfg   MonitorConfig
		field string
	}{
		{"interval", MonitorConfig{Interval: -time.Second}, "Interval"},
		{"down interval", MonitorConfig{DownInterval: -1}, "DownInterval"},
		{"timeout", MonitorConfig{Timeout: -1}, "Timeout"},
		{"fall", MonitorConfig{FallThreshold: -1}, "FallThreshold"},
		{"rise", MonitorConfig{RiseThreshold: -2}, "RiseThreshold"},
		{"jitter", MonitorConfig{Jitter: 1.5}, "Jitter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.Resolve()
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
			m, err := NewMonitor(tc.cfg, nil)
			require.Nil(t, m)
			require.ErrorAs(t, err, &ce)
		})
	}

	m, err := NewMonitor(MonitorConfig{}, func(context.Context) error { return nil })
	require.NoError(t, err)
	require.Equal(t, StateUp, m.Status().State)
	m.Stop() // never started: must not block
}

// TestMonitorNoJitter: a negative jitter probes exactly on the interval, whatever Rand says.
func TestMonitorNoJitter(t *testing.T) {
	h := newHarness(t, MonitorConfig{Jitter: -1, Rand: func() float64 { return 0 }})
	h.m.Start()
	h.blockUntil(1)
	h.clk.Advance(DefaultInterval - time.Nanosecond)
	require.Zero(t, h.calls.Load())
	h.clk.Advance(time.Nanosecond)
	h.event("probed")
	require.Equal(t, int32(1), h.calls.Load())
}

func TestMonitorStateMachine(t *testing.T) {
	bad := errors.New("token not present")
	type step struct {
		ok        bool
		want      State
		reason    string // checked when non-empty
		fail, suc int
	}
	okS := func(want State, suc int) step { return step{ok: true, want: want, suc: suc} }
	badS := func(want State, fail int) step { return step{ok: false, want: want, fail: fail} }
	tests := []struct {
		name    string
		initial State
		fall    int
		rise    int
		steps   []step
	}{
		{"up stays up", StateUp, 3, 2, []step{okS(StateUp, 1), okS(StateUp, 2)}},
		{"up -> degraded -> down -> up", StateUp, 3, 2, []step{
			{ok: false, want: StateDegraded, reason: "probe failure: token not present", fail: 1},
			badS(StateDegraded, 2),
			{ok: false, want: StateDown, reason: "3 probe failures: token not present", fail: 3},
			badS(StateDown, 4),
			okS(StateDown, 1),
			{ok: true, want: StateUp, reason: "2 probe successes", suc: 2},
		}},
		{"degraded recovers on one success", StateUp, 3, 2, []step{
			badS(StateDegraded, 1), badS(StateDegraded, 2),
			{ok: true, want: StateUp, reason: "probe succeeded", suc: 1},
			badS(StateDegraded, 1),
		}},
		{"a failure resets the rise count", StateDown, 3, 2, []step{
			okS(StateDown, 1), badS(StateDown, 1), okS(StateDown, 1), okS(StateUp, 2),
		}},
		{"fall threshold 1: up -> down directly", StateUp, 1, 1, []step{
			{ok: false, want: StateDown, reason: "1 probe failure: token not present", fail: 1},
			okS(StateUp, 1),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, MonitorConfig{InitialState: tc.initial, FallThreshold: tc.fall, RiseThreshold: tc.rise})
			h.m.Start()
			prev := tc.initial
			for i, s := range tc.steps {
				if s.ok {
					h.set(nil)
				} else {
					h.set(bad)
				}
				wait := time.Duration(DefaultInterval)
				if prev == StateDown {
					wait = DefaultDownInterval
				}
				st := h.tick(wait)
				require.Equal(t, s.want, st.State, "step %d", i)
				require.Equal(t, s.fail, st.ConsecutiveFailures, "step %d failures", i)
				require.Equal(t, s.suc, st.ConsecutiveSuccesses, "step %d successes", i)
				require.Equal(t, h.clk.Now(), st.LastProbe)
				if s.ok {
					require.Empty(t, st.LastError)
				} else {
					require.Equal(t, bad.Error(), st.LastError)
				}
				if s.reason != "" {
					require.Equal(t, s.reason, st.Reason, "step %d", i)
				}
				if s.want != prev {
					c := h.change(prev, s.want)
					require.Equal(t, h.clk.Now(), c.new.Since, "Since is the time of the change")
					require.Equal(t, st, c.new)
				} else {
					h.noChange()
				}
				prev = s.want
			}
			require.Equal(t, int32(len(tc.steps)), h.calls.Load())
		})
	}
}

func TestMonitorIntervalsAndJitter(t *testing.T) {
	tests := []struct {
		name    string
		initial State
		rand    float64
		want    time.Duration
	}{
		{"up, no jitter offset", StateUp, 0.5, 5 * time.Second},
		{"up, earliest", StateUp, 0, 4250 * time.Millisecond},
		{"up, latest", StateUp, 0.99, 5 * time.Second * 1147 / 1000},
		{"down uses DownInterval", StateDown, 0.5, time.Second},
		{"down, earliest", StateDown, 0, 850 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.rand
			h := newHarness(t, MonitorConfig{InitialState: tc.initial, Rand: func() float64 { return r }})
			h.m.Start()
			h.blockUntil(1)
			h.clk.Advance(tc.want - time.Microsecond)
			require.Equal(t, 1, h.clk.Pending(), "probe timer fired early")
			require.Zero(t, h.calls.Load())
			h.clk.Advance(time.Microsecond)
			h.event("probed")
			require.Equal(t, int32(1), h.calls.Load())
		})
	}
}

func TestMonitorProbeNow(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	h.m.Start()
	h.blockUntil(1)
	h.m.ProbeNow()
	h.event("probed")
	require.Equal(t, int32(1), h.calls.Load())
	require.Equal(t, mt0, h.m.Status().LastProbe, "probed without time passing")
	// The schedule restarts from the probe.
	h.tick(DefaultInterval)
	require.Equal(t, int32(2), h.calls.Load())
}

func TestMonitorTimeoutAndSingleProbe(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	h.block = make(chan struct{})
	var inFlight, maxInFlight atomic.Int32
	inner := h.probe
	h.fn = func(ctx context.Context) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			old := maxInFlight.Load()
			if n <= old || maxInFlight.CompareAndSwap(old, n) {
				break
			}
		}
		return inner(ctx)
	}
	h.m.Start()

	// The probe blocks (ignoring its context): it fails at its deadline.
	h.blockUntil(1)
	h.clk.Advance(DefaultInterval)
	h.waitEntered()
	h.blockUntil(1) // the probe deadline
	h.clk.Advance(DefaultProbeTimeout)
	h.event("probed")
	st := h.m.Status()
	require.Equal(t, StateDegraded, st.State)
	require.Equal(t, "probe timed out after 1s", st.LastError)
	require.Equal(t, DefaultProbeTimeout, st.LastLatency)

	// Still blocked at the next tick: that tick fails without starting a second probe.
	st = h.tick(DefaultInterval)
	require.Equal(t, "probe still running", st.LastError)
	require.Equal(t, 2, st.ConsecutiveFailures)
	require.Equal(t, int32(1), h.calls.Load())

	// Released: the late result is ignored, the next tick probes again.
	close(h.block)
	require.Eventually(t, func() bool { return !ProbeRunning(h.m) }, waitLong, time.Millisecond)
	st = h.tick(DefaultInterval)
	require.Equal(t, StateUp, st.State)
	require.Equal(t, int32(2), h.calls.Load())
	require.Equal(t, int32(1), maxInFlight.Load())
}

func TestMonitorProbeContextCancelledAtTimeout(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	cause := make(chan error, 1)
	h.fn = func(ctx context.Context) error {
		h.entered <- struct{}{}
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return ctx.Err()
	}
	h.m.Start()
	h.blockUntil(1)
	h.clk.Advance(DefaultInterval)
	h.waitEntered()
	h.blockUntil(1)
	h.clk.Advance(DefaultProbeTimeout)
	h.event("probed")
	select {
	case err := <-cause:
		require.EqualError(t, err, "probe timed out after 1s")
	case <-time.After(waitLong):
		t.Fatal("probe context not cancelled at the deadline")
	}
}

func TestMonitorStopIsBoundedWithHungProbe(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	h.block = make(chan struct{})
	h.m.Start()
	h.blockUntil(1)
	h.clk.Advance(DefaultInterval)
	h.waitEntered()
	h.blockUntil(1) // probe running, scheduler waiting on its deadline

	stopped := make(chan struct{})
	go func() { h.m.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(waitLong):
		t.Fatal("Stop blocked on a hung probe")
	}
	h.m.Stop()  // idempotent
	h.m.Start() // no restart after Stop
	require.True(t, ProbeRunning(h.m), "the hung probe is left running")
	close(h.block)
	require.Eventually(t, func() bool { return !ProbeRunning(h.m) }, waitLong, time.Millisecond)
}

func TestMonitorMarkDown(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	h.m.Start()
	h.blockUntil(1) // sleeping on the 5 s up interval
	h.clk.Advance(2 * time.Second)
	h.m.MarkDown("device error in traffic")
	c := h.change(StateUp, StateDown)
	require.Equal(t, "device error in traffic", c.new.Reason)
	require.Equal(t, h.clk.Now(), c.new.Since)
	h.event("rescheduled")

	// Repeated proof while already down changes nothing and does not postpone the probe.
	h.m.MarkDown("again")
	h.noChange()
	require.Equal(t, "device error in traffic", h.m.Status().Reason)

	// The next probe now comes after DownInterval, not after the rest of the up interval.
	h.blockUntil(1)
	h.clk.Advance(DefaultDownInterval - time.Microsecond)
	require.Zero(t, h.calls.Load())
	h.clk.Advance(time.Microsecond)
	h.event("probed")
	require.Equal(t, StateDown, h.m.Status().State, "one success is not enough")
	st := h.tick(DefaultDownInterval)
	require.Equal(t, StateUp, st.State)
}

func TestMonitorMarkDownNeverPostpones(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	h.m.Start()
	h.blockUntil(1)
	h.clk.Advance(4500 * time.Millisecond) // up probe due in 0.5 s; the down interval would be 1 s
	h.m.MarkDown("x")
	h.event("rescheduled")
	h.blockUntil(1)
	h.clk.Advance(500 * time.Millisecond)
	h.event("probed")
	require.Equal(t, int32(1), h.calls.Load())
}

func TestMonitorProbePanicIsAFailure(t *testing.T) {
	h := newHarness(t, MonitorConfig{})
	h.fn = func(context.Context) error { panic("boom") }
	h.m.Start()
	st := h.tick(DefaultInterval)
	require.Equal(t, StateDegraded, st.State)
	require.Equal(t, "probe panicked: boom", st.LastError)
}

// OnChange may call back into the monitor; the nested change is delivered after the current one.
func TestMonitorOnChangeReentrant(t *testing.T) {
	var m *Monitor
	var mu sync.Mutex
	var seen []string
	h := newHarness(t, MonitorConfig{OnChange: func(o, n Status) {
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%v->%v", o.State, n.State))
		mu.Unlock()
		if n.State == StateDegraded {
			m.MarkDown("escalated")
			_ = m.Status()
		}
	}})
	m = h.m
	h.set(errors.New("x"))
	h.m.Start()
	h.tick(DefaultInterval)
	h.change(StateUp, StateDegraded)
	c := h.change(StateDegraded, StateDown)
	require.Equal(t, "escalated", c.new.Reason)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"up->degraded", "degraded->down"}, seen)
}

// Changes from probes and from traffic signals race; OnChange must still see a consistent, serial story.
func TestMonitorOnChangeSerialUnderConcurrency(t *testing.T) {
	var active, overlaps atomic.Int32
	var mu sync.Mutex
	var chain []change
	h := newHarness(t, MonitorConfig{FallThreshold: 1, RiseThreshold: 1, OnChange: func(o, n Status) {
		if active.Add(1) != 1 {
			overlaps.Add(1)
		}
		mu.Lock()
		chain = append(chain, change{o, n})
		mu.Unlock()
		time.Sleep(50 * time.Microsecond)
		active.Add(-1)
	}})
	var flip atomic.Bool
	h.fn = func(context.Context) error {
		if flip.Load() {
			return errors.New("x")
		}
		return nil
	}
	h.m.Start()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				switch g {
				case 0:
					h.m.MarkDown("traffic")
				case 1:
					h.m.ProbeNow()
				case 2:
					_ = h.m.Status()
				}
				time.Sleep(20 * time.Microsecond)
			}
		})
	}
	for i := range 200 {
		flip.Store(i%3 == 0)
		h.m.ProbeNow()
		select {
		case <-h.events:
		case <-time.After(waitLong):
			t.Fatal("no probe")
		}
	}
	close(stop)
	wg.Wait()
	h.m.Stop()
	require.Zero(t, overlaps.Load(), "OnChange ran concurrently")
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, chain)
	for i := 1; i < len(chain); i++ {
		require.Equal(t, chain[i-1].new.State, chain[i].old.State, "change %d does not follow the previous one", i)
		require.NotEqual(t, chain[i].old.State, chain[i].new.State)
	}
}
