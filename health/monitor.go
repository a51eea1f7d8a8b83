package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// State is a device's health as seen by its monitor.
type State int

const (
	StateUp       State = iota // serving; probes pass
	StateDegraded              // at least one recent probe failed, but fewer than FallThreshold in a row
	StateDown                  // FallThreshold probe failures in a row, or traffic proved it down
)

// String returns "up", "degraded" or "down".
func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDegraded:
		return "degraded"
	case StateDown:
		return "down"
	default:
		return fmt.Sprintf("state(%d)", int(s))
	}
}

// Status is a snapshot of a monitor.
type Status struct {
	State       State
	Reason      string    // why the last change happened, e.g. "3 probe failures: <err text>"
	Since       time.Time // time of the last State change (creation time before any)
	LastProbe   time.Time
	LastLatency time.Duration
	LastError   string // text of the last probe error ("" after a success)

	ConsecutiveFailures, ConsecutiveSuccesses int
}

// ProbeFunc checks a device. It may ignore ctx and block (a cgo call cannot be interrupted): the monitor
// never waits for it past MonitorConfig.Timeout.
type ProbeFunc func(ctx context.Context) error

// MonitorConfig configures a Monitor. Zero fields get the defaults documented on each field; Resolve is
// the one place that applies them and checks the bounds.
type MonitorConfig struct {
	Name          string
	Interval      time.Duration // between probes while up or degraded; default 5 s
	DownInterval  time.Duration // between probes while down; default 1 s
	Jitter        float64       // ± fraction applied to every wait, at most 1; default 0.15; negative means none
	Timeout       time.Duration // per-probe deadline; default 1 s. A probe still running past it is a failure
	FallThreshold int           // consecutive failures that take the device down; default 3
	RiseThreshold int           // consecutive successes that bring a down device up; default 2
	InitialState  State         // the caller knows: usually StateUp after a successful open, StateDown otherwise
	Clock         Clock         // default RealClock()
	Rand          func() float64
	// OnChange is called once per state change, in order, never concurrently and with no monitor lock
	// held (it may call Status, MarkDown, ...; not Stop). A change made from inside OnChange is delivered
	// after the current call returns.
	OnChange func(old, new Status)
}

// Default monitor settings.
const (
	DefaultInterval      = 5 * time.Second
	DefaultDownInterval  = time.Second
	DefaultJitter        = 0.15
	DefaultProbeTimeout  = time.Second
	DefaultFallThreshold = 3
	DefaultRiseThreshold = 2
)

// ConfigError names a MonitorConfig field that is out of bounds.
type ConfigError struct {
	Field string // e.g. "Interval"
	Msg   string
}

func (e *ConfigError) Error() string { return "health: MonitorConfig." + e.Field + ": " + e.Msg }

// Resolve returns c with the defaults in its zero fields, or the fields that are out of bounds (each a
// *ConfigError). It is idempotent: a negative Jitter stays negative (none).
func (c MonitorConfig) Resolve() (MonitorConfig, error) {
	var errs []error
	positive := func(field string, v *time.Duration, def time.Duration) {
		switch {
		case *v < 0:
			errs = append(errs, &ConfigError{Field: field, Msg: fmt.Sprintf("%v is negative", *v)})
		case *v == 0:
			*v = def
		}
	}
	count := func(field string, v *int, def int) {
		switch {
		case *v < 0:
			errs = append(errs, &ConfigError{Field: field, Msg: fmt.Sprintf("%d is negative", *v)})
		case *v == 0:
			*v = def
		}
	}
	positive("Interval", &c.Interval, DefaultInterval)
	positive("DownInterval", &c.DownInterval, DefaultDownInterval)
	positive("Timeout", &c.Timeout, DefaultProbeTimeout)
	count("FallThreshold", &c.FallThreshold, DefaultFallThreshold)
	count("RiseThreshold", &c.RiseThreshold, DefaultRiseThreshold)
	switch {
	case c.Jitter > 1:
		errs = append(errs, &ConfigError{Field: "Jitter", Msg: fmt.Sprintf("%g is more than 1", c.Jitter)})
	case c.Jitter == 0:
		c.Jitter = DefaultJitter
	}
	if c.Clock == nil {
		c.Clock = RealClock()
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c, errors.Join(errs...)
}

var (
	errProbeStillRunning = errors.New("probe still running")
	errMonitorStopped    = errors.New("health: monitor stopped")
)

// Monitor probes one device on its own goroutine and runs the up/degraded/down state machine:
//
//	Up --1st failure--> Degraded --FallThreshold consecutive failures--> Down
//	Down --RiseThreshold consecutive successes--> Up;  Degraded --success--> Up
//
// Never more than one probe is in flight: if the previous one is still blocked when the next is due,
// that tick counts as a failure.
type Monitor struct {
	cfg   MonitorConfig
	probe ProbeFunc

	state atomic.Int32 // mirror of st.State, for the scheduler's wait without the lock

	mu         sync.Mutex
	st         Status
	queue      []change // state changes not yet delivered to OnChange
	delivering bool
	started    bool
	stopped    bool

	probing   atomic.Bool // a probe goroutine is running (maybe abandoned after its timeout)
	probeNow  chan struct{}
	resched   chan struct{}
	stop      chan struct{}
	done      chan struct{}
	stopOnce  sync.Once
	probeCtx  context.Context
	cancelAll context.CancelFunc

	// testHook, when set before Start, is called by the scheduler after each probe outcome is recorded
	// ("probed") and after it handled a reschedule request ("rescheduled").
	testHook func(event string)
}

type change struct{ old, new Status }

// NewMonitor returns a stopped monitor (call Start), or the fields of cfg that are out of bounds.
func NewMonitor(cfg MonitorConfig, probe ProbeFunc) (*Monitor, error) {
	cfg, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	m := &Monitor{
		cfg:      cfg,
		probe:    probe,
		probeNow: make(chan struct{}, 1),
		resched:  make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	m.probeCtx, m.cancelAll = context.WithCancel(context.Background())
	m.st = Status{State: cfg.InitialState, Since: cfg.Clock.Now(), Reason: "initial state"}
	m.state.Store(int32(cfg.InitialState))
	return m, nil
}

// Start runs the probe scheduler on its own goroutine. Probes run without any traffic. Start after Stop,
// or a second Start, does nothing.
func (m *Monitor) Start() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.stopped {
		return
	}
	m.started = true
	go m.run()
}

// Stop stops the scheduler and waits for it, which is bounded: a probe blocked forever (in cgo) is
// left to finish on its own, with its context cancelled, and its result is ignored.
func (m *Monitor) Stop() {
	m.stopOnce.Do(func() {
		m.mu.Lock()
		m.stopped = true
		started := m.started
		m.mu.Unlock()
		close(m.stop)
		m.cancelAll()
		if started {
			<-m.done
		}
	})
}

// Status returns a snapshot.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st
}

// ProbeNow asks for a probe as soon as possible (traffic saw a device error). Calls made while a probe
// is due or running coalesce into one extra probe.
func (m *Monitor) ProbeNow() {
	select {
	case m.probeNow <- struct{}{}:
	default:
	}
}

// MarkDown takes the device down at once (traffic proved it down, e.g. DEVICE_ERROR) and shortens the
// wait for the next probe to DownInterval. Only probes bring it back up.
func (m *Monitor) MarkDown(reason string) {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	old := m.st
	m.st.ConsecutiveSuccesses = 0 // successes before the proof of failure must not count towards rising
	changed := old.State != StateDown
	if changed {
		m.st.Reason = reason
		m.setStateLocked(StateDown, now, old)
	}
	m.mu.Unlock()
	if changed {
		select {
		case m.resched <- struct{}{}:
		default:
		}
		m.deliver()
	}
}

func (m *Monitor) setStateLocked(s State, now time.Time, old Status) {
	m.st.State = s
	m.st.Since = now
	m.state.Store(int32(s))
	m.queue = append(m.queue, change{old: old, new: m.st})
}

// deliver drains the change queue into OnChange. Whoever finds nobody delivering becomes the deliverer,
// so calls are ordered and never concurrent, and a change made from inside OnChange cannot deadlock.
func (m *Monitor) deliver() {
	m.mu.Lock()
	if m.delivering {
		m.mu.Unlock()
		return
	}
	m.delivering = true
	m.mu.Unlock()
	ended := false
	defer func() {
		if !ended { // OnChange panicked: later changes must still be delivered
			m.mu.Lock()
			m.delivering = false
			m.mu.Unlock()
		}
	}()
	for {
		c, ok := m.nextChange()
		if !ok {
			ended = true
			return
		}
		if m.cfg.OnChange != nil {
			m.cfg.OnChange(c.old, c.new)
		}
	}
}

// nextChange takes the oldest undelivered change; when there is none it ends the delivery in the same
// critical section, so a change queued just after is never left behind.
func (m *Monitor) nextChange() (change, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) == 0 {
		m.delivering = false
		return change{}, false
	}
	c := m.queue[0]
	m.queue[0] = change{}
	m.queue = m.queue[1:]
	return c, true
}

// wait returns the jittered delay before the next probe for the current state.
func (m *Monitor) wait() time.Duration {
	base := m.cfg.Interval
	if State(m.state.Load()) == StateDown {
		base = m.cfg.DownInterval
	}
	f := 1 + max(m.cfg.Jitter, 0)*(2*m.cfg.Rand()-1)
	return max(time.Duration(float64(base)*f), 0)
}

func (m *Monitor) run() {
	defer close(m.done)
	for {
		w := m.wait()
		due := m.cfg.Clock.Now().Add(w)
		t := m.cfg.Clock.NewTimer(w)
	sleep:
		for {
			select {
			case <-m.stop:
				t.Stop()
				return
			case <-t.C():
				break sleep
			case <-m.probeNow:
				t.Stop()
				break sleep
			case <-m.resched:
				// Went down while sleeping on the (long) up interval: probe on the down schedule, but never
				// later than already planned, so repeated MarkDowns cannot postpone probing.
				w := m.wait()
				if now := m.cfg.Clock.Now(); now.Add(w).Before(due) {
					t.Stop()
					due = now.Add(w)
					t = m.cfg.Clock.NewTimer(w)
				}
				if m.testHook != nil {
					m.testHook("rescheduled")
				}
			}
		}
		if !m.probeOnce() {
			return
		}
		if m.testHook != nil {
			m.testHook("probed")
		}
	}
}

type probeResult struct {
	err error
	end time.Time
}

// probeOnce runs one probe and records its outcome; it returns false when the monitor was stopped.
func (m *Monitor) probeOnce() bool {
	clock := m.cfg.Clock
	if !m.probing.CompareAndSwap(false, true) {
		m.record(errProbeStillRunning, 0)
		return true
	}
	ctx, cancel := context.WithCancelCause(m.probeCtx)
	res := make(chan probeResult, 1) // buffered: an abandoned probe must be able to finish without us
	start := clock.Now()
	go func() {
		defer cancel(nil)
		err := ctx.Err() // timed out or stopped before it even started: spare the device
		if err == nil {
			err = m.safeProbe(ctx)
		}
		end := clock.Now()
		// Clear the flag before handing over the result, so the next tick never sees a finished probe as
		// still running.
		m.probing.Store(false)
		res <- probeResult{err: err, end: end}
	}()
	t := clock.NewTimer(m.cfg.Timeout)
	select {
	case r := <-res:
		t.Stop()
		m.record(r.err, r.end.Sub(start))
	case <-t.C():
		err := fmt.Errorf("probe timed out after %v", m.cfg.Timeout)
		cancel(err)
		m.record(err, m.cfg.Timeout)
	case <-m.stop:
		t.Stop()
		cancel(errMonitorStopped)
		return false
	}
	return true
}

func (m *Monitor) safeProbe(ctx context.Context) (err error) {
	defer func() {
		// A panicking probe is a failed probe; taking the whole process down would turn one broken
		// device into an outage of all of them.
		if p := recover(); p != nil {
			err = fmt.Errorf("probe panicked: %v", p)
		}
	}()
	return m.probe(ctx)
}

func (m *Monitor) record(err error, latency time.Duration) {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	old := m.st
	st := &m.st
	st.LastProbe = now
	st.LastLatency = latency
	next := st.State
	if err == nil {
		st.LastError = ""
		st.ConsecutiveSuccesses++
		st.ConsecutiveFailures = 0
		switch {
		case st.State == StateDegraded:
			next, st.Reason = StateUp, "probe succeeded"
		case st.State == StateDown && st.ConsecutiveSuccesses >= m.cfg.RiseThreshold:
			next, st.Reason = StateUp, plural(st.ConsecutiveSuccesses, "probe success")
		}
	} else {
		st.LastError = err.Error()
		st.ConsecutiveFailures++
		st.ConsecutiveSuccesses = 0
		switch {
		case st.State != StateDown && st.ConsecutiveFailures >= m.cfg.FallThreshold:
			next, st.Reason = StateDown, fmt.Sprintf("%s: %s", plural(st.ConsecutiveFailures, "probe failure"), st.LastError)
		case st.State == StateUp:
			next, st.Reason = StateDegraded, "probe failure: "+st.LastError
		}
	}
	changed := next != old.State
	if changed {
		m.setStateLocked(next, now, old)
	}
	m.mu.Unlock()
	if changed {
		m.deliver()
	}
}

func plural(n int, what string) string {
	switch {
	case n == 1:
		return "1 " + what
	case strings.HasSuffix(what, "s"):
		return fmt.Sprintf("%d %ses", n, what)
	default:
		return fmt.Sprintf("%d %ss", n, what)
	}
}
