package failover

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/stretchr/testify/require"
)

// breakerState is the breaker's state as of its last change (gobreaker's State() would move it).
func (e *env) breakerState(m int) gobreaker.State {
	return gobreaker.State(e.r.members[m].brState.Load())
}

func (e *env) openFor(m int) time.Duration { return time.Duration(e.r.members[m].openFor.Load()) }

// waitEligible waits (real time: gobreaker's clock) until the breaker's backoff lets member m be picked.
func (e *env) waitEligible(m int) {
	e.t.Helper()
	require.Eventually(e.t, func() bool { _, ok := e.r.Pick(1<<m, 0); return ok }, waitLong, time.Millisecond)
}

func (e *env) transitions(m int) []string {
	var out []string
	for _, b := range e.obs.snapshot().breakers {
		if b.member == m {
			out = append(out, b.from+">"+b.to)
		}
	}
	return out
}

func TestBreakerOpensAfterThreeDeviceDownErrors(t *testing.T) {
	e := newEnv(t, Config{DisablePanic: true}, members(0, 0))
	e.fakes[0].setErr(errClass(ClassDown))
	// Breakers run on the real clock: the breaker opened between these two instants.
	before := time.Now()
	for i := range 3 {
		require.Equal(t, gobreaker.StateClosed, e.breakerState(0), "before failure %d", i+1)
		_, out, err := e.do(1 << 0)
		require.ErrorIs(t, err, ErrNoMember)
		require.Equal(t, 1, out.Attempts)
	}
	require.Equal(t, gobreaker.StateOpen, e.breakerState(0))
	require.Equal(t, []string{"closed>open"}, e.transitions(0))
	require.Equal(t, 5*time.Second, e.openFor(0))
	after := time.Now()

	_, out, err := e.do(1 << 0)
	require.ErrorIs(t, err, ErrNoMember)
	require.Zero(t, out.Attempts, "an open breaker is not even tried")
	require.Equal(t, int32(3), e.fakes[0].calls.Load())

	v, _, err := e.do(AllMembers)
	require.NoError(t, err)
	require.Equal(t, 1, v, "the other member serves")

	st := e.r.Status()[0]
	require.Equal(t, "open", st.Breaker)
	require.Equal(t, 1, st.Offenses)
	require.False(t, st.OpenUntil.Before(before.Add(5*time.Second)), "open until %v, opened after %v", st.OpenUntil, before)
	require.False(t, st.OpenUntil.After(after.Add(5*time.Second)), "open until %v, opened before %v", st.OpenUntil, after)
}

// TestPanicMode: when breakers shut out every member that health calls up, one breaker-free attempt per
// member is still made (and reported to no breaker); members health calls down are never tried.
func TestPanicMode(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	for _, f := range e.fakes {
		f.setErr(errClass(ClassDown))
	}
	for range 3 {
		_, _, err := e.do(AllMembers)
		require.ErrorIs(t, err, ErrNoMember)
	}
	require.Equal(t, gobreaker.StateOpen, e.breakerState(0))
	require.Equal(t, gobreaker.StateOpen, e.breakerState(1))
	before := e.r.members[0].breaker.Counts()

	// Both breakers open, both members healthy again: the call is served in panic mode.
	e.fakes[0].setErr(nil)
	e.fakes[1].setErr(nil)
	v, out, err := e.do(AllMembers)
	require.NoError(t, err)
	require.Equal(t, 1, out.Attempts)
	require.Contains(t, []int{0, 1}, v)
	require.Equal(t, gobreaker.StateOpen, e.breakerState(0), "a panic attempt does not report to the breaker")
	require.Equal(t, before, e.r.members[0].breaker.Counts())

	// A member health calls down is never tried, breaker or not.
	e.r.SetUp(0, false)
	e.r.SetUp(1, false)
	calls := e.fakes[0].calls.Load() + e.fakes[1].calls.Load()
	_, out, err = e.do(AllMembers)
	require.ErrorIs(t, err, ErrNoMember)
	require.Zero(t, out.Attempts)
	require.Equal(t, calls, e.fakes[0].calls.Load()+e.fakes[1].calls.Load())
}

func TestBreakerNeverOpensOnCallerErrors(t *testing.T) {
	for _, c := range []Class{ClassCaller, ClassRefused, ClassFatal} {
		t.Run(c.String(), func(t *testing.T) {
			e := newEnv(t, Config{}, members(0, 0))
			e.r.Latency(1).Reset(time.Second)
			e.fakes[0].setErr(errClass(c))
			for range 1000 {
				_, out, err := e.do(AllMembers)
				require.Equal(t, c, ClassOf(err))
				require.Equal(t, 1, out.Attempts, "never retried")
			}
			require.Equal(t, gobreaker.StateClosed, e.breakerState(0))
			require.Empty(t, e.transitions(0))
			counts := e.r.members[0].breaker.Counts()
			require.Zero(t, counts.TotalFailures)
			require.Equal(t, uint32(1000), counts.TotalExclusions)
			require.Zero(t, e.fakes[1].calls.Load())
		})
	}
}

func TestBreakerTripsOnFailureRatio(t *testing.T) {
	e := newEnv(t, Config{}, members(0))
	for i := range 20 {
		require.Equal(t, gobreaker.StateClosed, e.breakerState(0), "after %d calls", i)
		if i%2 == 0 {
			e.fakes[0].setErr(nil)
		} else {
			e.fakes[0].setErr(errClass(ClassBusy))
		}
		_, _, _ = e.do(AllMembers)
	}
	// Never 3 failures in a row, but 10 of 20.
	require.Equal(t, gobreaker.StateOpen, e.breakerState(0))
}

// A half-open trial that hangs is reported failed at its attempt deadline, so the breaker re-opens
// instead of waiting forever for the trial's outcome, and later recovers normally.
func TestBreakerHalfOpenHungTrialDoesNotJam(t *testing.T) {
	cfg := Config{Breaker: BreakerConfig{OpenBase: 10 * time.Millisecond, OpenMax: 10 * time.Second}, Rand: fixedRand(0.5)}
	e := newEnv(t, cfg, members(0))
	f := e.fakes[0]
	f.setErr(errClass(ClassDown))
	for range 3 {
		_, _, _ = e.do(AllMembers)
	}
	require.Equal(t, []string{"closed>open"}, e.transitions(0))

	f.hold.Store(true)
	e.waitEligible(0)
	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(1)
	require.Equal(t, gobreaker.StateHalfOpen, e.breakerState(0))
	e.clk.Advance(50 * time.Millisecond)
	r := recv(t, res)
	var te *AttemptTimeoutError
	require.ErrorAs(t, r.err, &te)
	require.Equal(t, []string{"closed>open", "open>half-open", "half-open>open"}, e.transitions(0))
	require.Equal(t, 20*time.Millisecond, e.openFor(0), "second offence: doubled")

	// The hung call returns late: no second report.
	f.setErr(nil)
	f.release <- struct{}{}
	e.waitIdle(0)
	require.Len(t, e.obs.attemptsOf(0), 4)
	require.Len(t, e.transitions(0), 3)

	// Not jammed: after the backoff, two successful trials close it.
	f.hold.Store(false)
	e.waitEligible(0)
	for range 2 {
		_, _, err := e.do(AllMembers)
		require.NoError(t, err)
	}
	require.Equal(t, gobreaker.StateClosed, e.breakerState(0))
	require.Equal(t, "half-open>closed", e.transitions(0)[4])
	require.Zero(t, e.r.members[0].gate.Load())
}

func TestBreakerRepeatOffenderBackoff(t *testing.T) {
	const base = 10 * time.Millisecond
	cfg := Config{Breaker: BreakerConfig{OpenBase: base, OpenMax: 10 * time.Second}, Rand: fixedRand(0.5)}
	e := newEnv(t, cfg, members(0))
	f := e.fakes[0]
	trip := func() {
		f.setErr(errClass(ClassDown))
		for range 3 {
			_, _, _ = e.do(AllMembers)
		}
		require.Equal(t, gobreaker.StateOpen, e.breakerState(0))
	}
	closeIt := func() {
		f.setErr(nil)
		e.waitEligible(0)
		for range 2 {
			_, _, err := e.do(AllMembers)
			require.NoError(t, err)
		}
		require.Equal(t, gobreaker.StateClosed, e.breakerState(0))
	}

	trip()
	want := []time.Duration{base}
	require.Equal(t, base, e.openFor(0))
	for _, d := range []time.Duration{2 * base, 4 * base} {
		e.waitEligible(0)
		_, _, _ = e.do(AllMembers) // the half-open trial fails again
		require.Equal(t, d, e.openFor(0))
		want = append(want, d)
	}
	closeIt()
	trip() // soon after closing: still a repeat offender
	require.Equal(t, 8*base, e.openFor(0))
	require.Equal(t, 4, e.r.Status()[0].Offenses)
	want = append(want, 8*base)

	// Each open period was honoured: the breaker went half-open no earlier than its backoff allowed.
	var openedAt time.Time
	n := 0
	for _, b := range e.obs.snapshot().breakers {
		switch b.to {
		case "open":
			openedAt = b.at
		case "half-open":
			require.GreaterOrEqual(t, b.at.Sub(openedAt), want[n]-time.Millisecond, "open period %d", n)
			n++
		}
	}
	require.Equal(t, 3, n)

	// Closed for long enough: forgiven, back to OpenBase.
	closeIt()
	e.r.members[0].closedAt -= int64(e.r.forgiveAfter) // as if it had stayed closed that long
	trip()
	require.Equal(t, base, e.openFor(0))
	require.Equal(t, 1, e.r.Status()[0].Offenses)
}

func TestOpenPeriod(t *testing.T) {
	tests := []struct {
		name     string
		rand     float64
		offenses int
		want     time.Duration
	}{
		{"first offence: base, no jitter", 0, 1, time.Second},
		{"second, mid jitter", 0.5, 2, 2 * time.Second},
		{"third, low jitter", 0, 3, 3200 * time.Millisecond},
		{"third, high jitter", 0.999, 3, 4798400 * time.Microsecond},
		{"capped", 0.5, 10, 10 * time.Second},
		{"capped, jitter stays under the cap", 0.999, 10, 10 * time.Second},
		{"capped, low jitter", 0, 10, 8 * time.Second},
		{"huge offence count", 0.5, 1000, 10 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(Config{Rand: fixedRand(tc.rand), Breaker: BreakerConfig{OpenBase: time.Second, OpenMax: 10 * time.Second}}, members(0))
			require.NoError(t, err)
			defer r.Close()
			require.InDelta(t, float64(tc.want), float64(r.openPeriod(tc.offenses)), float64(time.Microsecond))
		})
	}
}

// TestStatusDoesNotMoveTheBreaker: once an open breaker's backoff has passed, Status says the next call is a
// trial, but reading it moves nothing: the breaker goes half-open only when a call is let through.
func TestStatusDoesNotMoveTheBreaker(t *testing.T) {
	cfg := Config{DisablePanic: true, Breaker: BreakerConfig{OpenBase: 10 * time.Millisecond, OpenMax: 10 * time.Second}}
	e := newEnv(t, cfg, members(0))
	e.fakes[0].setErr(errClass(ClassDown))
	for range 3 {
		_, _, _ = e.do(AllMembers)
	}
	require.Equal(t, "open", e.r.Status()[0].Breaker)
	require.Eventually(t, func() bool { return e.r.Status()[0].Breaker == "half-open" }, waitLong, time.Millisecond)
	for range 100 {
		require.Equal(t, "half-open", e.r.Status()[0].Breaker)
	}
	require.Equal(t, []string{"closed>open"}, e.transitions(0), "reading status moved no breaker")
	require.Equal(t, gobreaker.StateOpen, e.breakerState(0))

	e.fakes[0].setErr(nil)
	_, _, err := e.do(AllMembers)
	require.NoError(t, err)
	require.Equal(t, []string{"closed>open", "open>half-open"}, e.transitions(0), "the call was the trial")
}

// blockingObserver holds BreakerChanged calls to closed until released, as a slow log sink would.
type blockingObserver struct {
	nopObserver
	changed chan string
	release chan struct{}
}

func (o *blockingObserver) BreakerChanged(_ int, from, to string) {
	o.changed <- from + ">" + to
	if to == "closed" {
		<-o.release
	}
}

// TestBreakerObserverOutsideTheLock: the observer hears of a breaker change after gobreaker has released
// its lock, so a slow observer does not stall other calls on that breaker.
func TestBreakerObserverOutsideTheLock(t *testing.T) {
	obs := &blockingObserver{changed: make(chan string, 10), release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(obs.release) }) }
	t.Cleanup(release)
	cfg := Config{Observer: obs, DisablePanic: true, StallThreshold: -1,
		Breaker: BreakerConfig{ConsecutiveFailures: 1, HalfOpenMax: 1, OpenBase: time.Millisecond, OpenMax: time.Millisecond}}
	r, err := New(cfg, members(0))
	require.NoError(t, err)
	t.Cleanup(r.Close)
	fail := func(context.Context, int) (int, error) { return 0, errClass(ClassDown) }
	ok := func(context.Context, int) (int, error) { return 0, nil }

	_, _, err = Do(context.Background(), r, "sign", AllMembers, fail)
	require.ErrorIs(t, err, ErrNoMember)
	require.Equal(t, "closed>open", recv(t, obs.changed))
	require.Eventually(t, func() bool { _, ok := r.Pick(AllMembers, 0); return ok }, waitLong, time.Millisecond)
	trial := make(chan error, 1)
	go func() {
		_, _, err := Do(context.Background(), r, "sign", AllMembers, ok)
		trial <- err
	}()
	require.Equal(t, "open>half-open", recv(t, obs.changed))
	require.Equal(t, "half-open>closed", recv(t, obs.changed))

	// The observer is still busy with the change to closed: the breaker itself must be free.
	next := make(chan Outcome, 1)
	go func() {
		_, out, _ := Do(context.Background(), r, "sign", AllMembers, ok)
		next <- out
	}()
	select {
	case out := <-next:
		require.Equal(t, Outcome{Member: 0, Attempts: 1}, out, "served by the closed breaker")
	case <-time.After(5 * time.Second):
		t.Fatal("a call waited for the observer: it runs under the breaker's lock")
	}
	release()
	require.NoError(t, recv(t, trial))
}
