package failover

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/health/fakeclock"
)

var ft0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

const waitLong = 10 * time.Second // bound for things that happen "at once"; only reached when broken

// lockedRand is a deterministic, concurrency-safe Config.Rand.
func lockedRand(seed uint64) func() float64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64()
	}
}

func fixedRand(v float64) func() float64 { return func() float64 { return v } }

// devErr is what pkcs11ha's *DeviceError looks like to failover.
type devErr struct {
	class Class
	msg   string
}

func (e *devErr) Error() string        { return e.msg }
func (e *devErr) FailoverClass() Class { return e.class }

func errClass(c Class) error { return &devErr{class: c, msg: "ckr " + c.String()} }

type attemptEvent struct {
	member  int
	op      string
	class   Class
	latency time.Duration
	hedge   bool
}

type breakerSeen struct {
	member   int
	from, to string
	at       time.Time // real time: breakers run on the real clock
}

type abandonEvent struct{ member, per, total int }

// recObserver records every event.
type recObserver struct {
	clock health.Clock

	mu sync.Mutex
	events
	perMember  map[int]int
	classCount map[Class]int
}

func (o *recObserver) AttemptDone(member int, op string, class Class, _ error, latency time.Duration, hedge bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.attempts = append(o.attempts, attemptEvent{member, op, class, latency, hedge})
	if o.perMember == nil {
		o.perMember, o.classCount = map[int]int{}, map[Class]int{}
	}
	o.perMember[member]++
	o.classCount[class]++
}

func (o *recObserver) BreakerChanged(member int, from, to string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.breakers = append(o.breakers, breakerSeen{member, from, to, time.Now()})
}

func (o *recObserver) Failover(op string, from, to int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failovers = append(o.failovers, [2]int{from, to})
}

func (o *recObserver) Spill(op string, to int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.spills = append(o.spills, to)
}

func (o *recObserver) Hedged(op string, primary, backup int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.hedges = append(o.hedges, [2]int{primary, backup})
	o.hedgeAt = append(o.hedgeAt, o.clock.Now())
}

func (o *recObserver) Abandoned(member int, per, total int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.abandons = append(o.abandons, abandonEvent{member, per, total})
}

// events is a copy of what the observer saw so far.
type events struct {
	attempts  []attemptEvent
	breakers  []breakerSeen
	failovers [][2]int
	spills    []int
	hedges    [][2]int
	hedgeAt   []time.Time
	abandons  []abandonEvent
}

func (o *recObserver) snapshot() events {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.events
	e.attempts, e.breakers, e.failovers = slices.Clone(e.attempts), slices.Clone(e.breakers), slices.Clone(e.failovers)
	e.spills, e.hedges, e.hedgeAt, e.abandons = slices.Clone(e.spills), slices.Clone(e.hedges), slices.Clone(e.hedgeAt), slices.Clone(e.abandons)
	return e
}

func (o *recObserver) attemptsOf(member int) []attemptEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []attemptEvent
	for _, a := range o.attempts {
		if a.member == member {
			out = append(out, a)
		}
	}
	return out
}

// fake is a scripted member: it succeeds, fails with err, or holds until released.
type fake struct {
	calls   atomic.Int32
	hold    atomic.Bool
	err     atomic.Pointer[error]
	release chan struct{} // one receive per held call
	entered chan struct{} // one send per held call
}

func (f *fake) setErr(err error) { f.err.Store(&err) }

func (f *fake) run(ctx context.Context) error {
	f.calls.Add(1)
	if f.hold.Load() {
		f.entered <- struct{}{} // buffered; tells the test this held call is running
		<-f.release
	}
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

type env struct {
	t     *testing.T
	clk   *fakeclock.Clock
	r     *Router
	obs   *recObserver
	fakes []*fake
}

func members(tiers ...int) []MemberConfig {
	out := make([]MemberConfig, len(tiers))
	for i, t := range tiers {
		out[i] = MemberConfig{Name: fmt.Sprintf("m%d", i), Tier: t}
	}
	return out
}

// newEnv builds a Router on a fake clock (unless cfg has a clock) with a recording observer and one fake
// per member. Cleanup releases held fakes, waits for every attempt to end, and closes the Router.
func newEnv(t *testing.T, cfg Config, ms []MemberConfig) *env {
	t.Helper()
	clk := fakeclock.New(ft0)
	if cfg.Clock == nil {
		cfg.Clock = clk
	}
	if cfg.Rand == nil {
		cfg.Rand = lockedRand(1)
	}
	if cfg.StallThreshold == 0 {
		// The watchdog runs on real time; a loaded test machine would stall it at random. Tests of it set
		// a threshold and mark stalls by hand.
		cfg.StallThreshold = -1
	}
	obs := &recObserver{clock: cfg.Clock}
	cfg.Observer = obs
	r, err := New(cfg, ms)
	require.NoError(t, err)
	e := &env{t: t, clk: clk, r: r, obs: obs}
	for range ms {
		e.fakes = append(e.fakes, &fake{release: make(chan struct{}), entered: make(chan struct{}, 1000)})
	}
	t.Cleanup(func() {
		for _, f := range e.fakes {
			f.hold.Store(false)
		}
		for i, f := range e.fakes {
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			for e.inFlight(i) > 0 {
				select {
				case f.release <- struct{}{}:
				case <-time.After(time.Millisecond):
				case <-ctx.Done():
					t.Errorf("member %d never went idle", i)
				}
				if ctx.Err() != nil {
					break
				}
			}
			cancel()
		}
		r.Close()
	})
	return e
}

// fn dispatches to the member's fake and returns the member index as the value.
func (e *env) fn(ctx context.Context, m int) (int, error) {
	return m, e.fakes[m].run(ctx)
}

func (e *env) do(mask Mask) (int, Outcome, error) {
	return Do(context.Background(), e.r, "sign", mask, e.fn)
}

type doResult struct {
	v   int
	out Outcome
	err error
}

// goDo runs Do on its own goroutine.
func (e *env) goDo(ctx context.Context, mask Mask) <-chan doResult {
	ch := make(chan doResult, 1)
	go func() {
		v, out, err := Do(ctx, e.r, "sign", mask, e.fn)
		ch <- doResult{v, out, err}
	}()
	return ch
}

func (e *env) blockUntil(n int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	require.NoError(e.t, e.clk.BlockUntilContext(ctx, n), "waiting for %d pending timers (have %d)", n, e.clk.Pending())
}

func (e *env) entered(m int) {
	e.t.Helper()
	select {
	case <-e.fakes[m].entered:
	case <-time.After(waitLong):
		e.t.Fatalf("member %d was never called", m)
	}
}

// abandoned is the number of abandoned attempts (given up on, fn not yet returned) over all members.
func (e *env) abandoned() int { return int(e.r.abandonedTotal.Load()) }

// inFlight is the number of attempts running on member m, abandoned ones included.
func (e *env) inFlight(m int) int { return int(e.r.members[m].inFlight.Load()) }

// waitIdle waits until no attempt (abandoned ones included) runs on member m: every release notifies
// slot waiters, so it registers as one.
func (e *env) waitIdle(m int) {
	e.t.Helper()
	r := e.r
	deadline := time.After(waitLong)
	for {
		r.waiters.Add(1)
		ch := *r.slotCh.Load()
		if e.inFlight(m) == 0 {
			r.waiters.Add(-1)
			return
		}
		select {
		case <-ch:
			r.waiters.Add(-1)
		case <-deadline:
			r.waiters.Add(-1)
			e.t.Fatalf("member %d never went idle", m)
		}
	}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLong):
		t.Fatal("timed out waiting for a result")
		var zero T
		return zero
	}
}

func notYet[T any](t *testing.T, ch <-chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("returned too early: %+v", v)
	default:
	}
}
