package failover

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

func TestDoTierPreference(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0, 1, 1))
	counts := make([]int, 4)
	for range 1000 {
		v, out, err := e.do(AllMembers)
		require.NoError(t, err)
		require.Equal(t, v, out.Member)
		require.Equal(t, 1, out.Attempts)
		counts[v]++
	}
	require.Zero(t, counts[2]+counts[3], "a healthy local pair sends nothing to DR")
	require.Greater(t, counts[0], 350, "both local members share the load: %v", counts)
	require.Greater(t, counts[1], 350, "both local members share the load: %v", counts)
	require.Empty(t, e.obs.snapshot().spills)
	require.Zero(t, e.clk.Pending(), "every attempt timer was stopped")
}

func TestDoPrefersLessLoadedMember(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	e.fakes[0].hold.Store(true)
	held := e.goDo(context.Background(), 1<<0) // occupies member 0
	e.entered(0)
	for range 100 {
		v, _, err := e.do(AllMembers)
		require.NoError(t, err)
		require.Equal(t, 1, v, "member 0 has a call in flight")
	}
	e.fakes[0].release <- struct{}{}
	require.NoError(t, recv(t, held).err)
}

func TestDoSpillsWhenTier0DownAndReturns(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0, 1, 1))
	e.r.SetUp(0, false)
	e.r.SetUp(1, false)
	for range 100 {
		v, _, err := e.do(AllMembers)
		require.NoError(t, err)
		require.GreaterOrEqual(t, v, 2)
	}
	require.Len(t, e.obs.snapshot().spills, 100, "one Spill per call")

	e.r.SetUp(1, true)
	for range 100 {
		v, _, err := e.do(AllMembers)
		require.NoError(t, err)
		require.Equal(t, 1, v, "back to tier 0 as soon as it is up")
	}
	require.Len(t, e.obs.snapshot().spills, 100)
}

func TestDoNoEligibleMember(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 1))
	e.r.SetUp(0, false)
	e.r.SetUp(1, false)
	_, out, err := e.do(AllMembers)
	var nm *NoMemberError
	require.ErrorAs(t, err, &nm)
	require.ErrorIs(t, err, ErrNoMember)
	require.Zero(t, nm.Tried)
	require.Equal(t, Outcome{Member: -1}, out)
	require.Zero(t, e.fakes[0].calls.Load()+e.fakes[1].calls.Load())
	require.Zero(t, e.clk.Pending(), "no waiting when nothing is eligible")
}

// saturate fills both tier-0 members (capacity 1 each) with held calls.
func saturate(t *testing.T, e *env) []<-chan doResult {
	e.fakes[0].hold.Store(true)
	e.fakes[1].hold.Store(true)
	a := e.goDo(context.Background(), AllMembers)
	b := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.entered(1)
	e.blockUntil(2) // their attempt deadlines
	return []<-chan doResult{a, b}
}

func capped(tiers ...int) []MemberConfig {
	ms := members(tiers...)
	for i := range ms {
		ms[i].Capacity = 1
	}
	return ms
}

func TestDoSpillsAfterSpillWaitWhenTier0Saturated(t *testing.T) {
	e := newEnv(t, Config{SpillWait: 2 * time.Millisecond}, capped(0, 0, 1))
	held := saturate(t, e)

	third := e.goDo(context.Background(), AllMembers)
	e.blockUntil(3) // + the spill wait
	e.clk.Advance(2*time.Millisecond - time.Nanosecond)
	notYet(t, third)
	require.Zero(t, e.fakes[2].calls.Load())
	e.clk.Advance(time.Nanosecond)
	res := recv(t, third)
	require.NoError(t, res.err)
	require.Equal(t, 2, res.v, "spilled to DR after SpillWait")
	require.Equal(t, []int{2}, e.obs.snapshot().spills)

	for _, m := range []int{0, 1} {
		e.fakes[m].release <- struct{}{}
	}
	for _, h := range held {
		require.NoError(t, recv(t, h).err)
	}
}

func TestDoWaitsForTier0SlotWithinSpillWait(t *testing.T) {
	e := newEnv(t, Config{SpillWait: 2 * time.Millisecond}, capped(0, 0, 1))
	held := saturate(t, e)

	third := e.goDo(context.Background(), AllMembers)
	e.blockUntil(3)
	e.fakes[0].hold.Store(false)
	e.fakes[0].release <- struct{}{} // member 0's first call returns: a slot frees before SpillWait
	res := recv(t, third)
	require.NoError(t, res.err)
	require.Equal(t, 0, res.v, "stayed local")
	require.Empty(t, e.obs.snapshot().spills)
	require.Zero(t, e.fakes[2].calls.Load())
	e.blockUntil(1) // the spill timer was stopped; only the held call on member 1 remains

	e.fakes[1].release <- struct{}{}
	got := []int{recv(t, held[0]).v, recv(t, held[1]).v}
	require.ElementsMatch(t, []int{0, 1}, got)
}

func TestDoWaitsForSlotWhenEverythingIsSaturated(t *testing.T) {
	e := newEnv(t, Config{SpillWait: 2 * time.Millisecond}, capped(0, 0))
	held := saturate(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	third := e.goDo(ctx, AllMembers)
	e.blockUntil(3)
	e.clk.Advance(2 * time.Millisecond) // SpillWait over, nowhere to spill: keep waiting
	notYet(t, third)
	cancel()
	res := recv(t, third)
	require.ErrorIs(t, res.err, context.Canceled)
	require.Zero(t, res.out.Attempts)
	for _, m := range []int{0, 1} {
		e.fakes[m].release <- struct{}{}
	}
	for _, h := range held {
		require.NoError(t, recv(t, h).err)
	}
}

func TestDoRetriesOnlyRetryableClasses(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		retry bool
	}{
		{"down", errClass(ClassDown), true},
		{"stalled", errClass(ClassStalled), true},
		{"busy", errClass(ClassBusy), true},
		{"unclassified", errors.New("boom"), true},
		{"context error not from the caller", context.DeadlineExceeded, true},
		{"caller", errClass(ClassCaller), false},
		{"refused", errClass(ClassRefused), false},
		{"fatal", errClass(ClassFatal), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{}, members(0, 0, 1))
			e.r.Latency(1).Reset(time.Second) // member 0 first
			e.fakes[0].setErr(tc.err)
			v, out, err := e.do(AllMembers)
			ev := e.obs.snapshot()
			if tc.retry {
				require.NoError(t, err)
				require.Equal(t, 1, v)
				require.Equal(t, Outcome{Member: 1, Attempts: 2}, out)
				require.Equal(t, [][2]int{{0, 1}}, ev.failovers)
			} else {
				require.ErrorIs(t, err, tc.err, "returned as is")
				require.Equal(t, Outcome{Member: 0, Attempts: 1}, out)
				require.Empty(t, ev.failovers)
			}
			require.Equal(t, int32(1), e.fakes[0].calls.Load())
			if !tc.retry {
				require.Zero(t, e.fakes[1].calls.Load()+e.fakes[2].calls.Load())
			}
		})
	}
}

func TestDoAllMembersFail(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0, 1))
	for _, f := range e.fakes {
		f.setErr(errClass(ClassBusy))
	}
	_, out, err := e.do(AllMembers)
	var nm *NoMemberError
	require.ErrorAs(t, err, &nm)
	require.Equal(t, 3, nm.Tried)
	require.Equal(t, 3, out.Attempts)
	require.Equal(t, ClassBusy, ClassOf(nm.Last))
	ev := e.obs.snapshot()
	require.Len(t, ev.failovers, 2)
	require.Len(t, ev.spills, 1)
}

func TestDoMaxAttempts(t *testing.T) {
	e := newEnv(t, Config{MaxAttempts: 1}, members(0, 0))
	e.r.Latency(1).Reset(time.Second)
	e.fakes[0].setErr(errClass(ClassDown))
	_, out, err := e.do(AllMembers)
	require.ErrorIs(t, err, ErrNoMember)
	require.Equal(t, 1, out.Attempts)
	require.Zero(t, e.fakes[1].calls.Load())
}

func TestDoHungMemberCostsOneAttemptDeadline(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	e.r.Latency(1).Reset(10 * time.Millisecond) // member 0 (5 ms) is tried first
	e.fakes[0].hold.Store(true)

	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(1)
	e.clk.Advance(50*time.Millisecond - time.Nanosecond)
	notYet(t, res)
	e.clk.Advance(time.Nanosecond)
	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, Outcome{Member: 1, Attempts: 2}, r.out)
	require.Equal(t, ft0.Add(50*time.Millisecond), e.clk.Now(), "one attempt deadline, nothing more")

	a0 := e.obs.attemptsOf(0)
	require.Len(t, a0, 1)
	require.Equal(t, ClassDown, a0[0].class)
	require.Equal(t, 50*time.Millisecond, a0[0].latency)
	require.Equal(t, 50*time.Millisecond, e.r.Latency(0).Value(), "a hung member looks slow")
	require.Equal(t, 1, e.abandoned())
	require.Equal(t, 1, e.inFlight(0), "the abandoned call keeps its slot")

	e.fakes[0].release <- struct{}{}
	e.waitIdle(0)
	require.Zero(t, e.abandoned())
	require.Len(t, e.obs.attemptsOf(0), 1, "the late result is not reported again")
	require.Equal(t, []abandonEvent{{0, 1, 1}, {0, 0, 0}}, e.obs.snapshot().abandons)
	require.Equal(t, uint32(1), e.r.members[0].breaker.Counts().TotalFailures)
}

func TestDoAttemptContext(t *testing.T) {
	e := newEnv(t, Config{}, members(0))
	causes := make(chan error, 1)
	deadlines := make(chan time.Time, 1)
	fn := func(ctx context.Context, m int) (int, error) {
		d, _ := ctx.Deadline()
		deadlines <- d
		<-ctx.Done()
		causes <- ctx.Err()
		return 0, ctx.Err()
	}
	res := make(chan error, 1)
	go func() {
		_, _, err := Do(context.Background(), e.r, "sign", AllMembers, fn)
		res <- err
	}()
	require.Equal(t, ft0.Add(50*time.Millisecond), recv(t, deadlines))
	e.blockUntil(1)
	e.clk.Advance(50 * time.Millisecond)
	require.Equal(t, context.DeadlineExceeded, recv(t, causes), "fn's context ends at the attempt deadline")
	var te *AttemptTimeoutError
	err := recv(t, res)
	require.ErrorIs(t, err, ErrNoMember)
	require.ErrorAs(t, err, &te)
	require.Equal(t, "m0", te.Member)
	require.Equal(t, ClassDown, ClassOf(err))
}

// fn's context carries the caller's values, and ends when the caller's context does: while Do waits, and
// for an attempt still running after Do returned (a hedge that lost).
func TestDoAttemptContextFollowsTheCaller(t *testing.T) {
	type key struct{}
	t.Run("while Do waits", func(t *testing.T) {
		e := newEnv(t, Config{}, members(0))
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
		seen := make(chan error, 1)
		fn := func(actx context.Context, _ int) (int, error) {
			require.Equal(t, "v", actx.Value(key{}))
			require.NotNil(t, AttemptOf(actx))
			cancel()
			<-actx.Done()
			seen <- actx.Err()
			return 0, actx.Err()
		}
		_, _, err := Do(ctx, e.r, "sign", AllMembers, fn)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, context.Canceled, recv(t, seen))
	})
	t.Run("after Do returned", func(t *testing.T) {
		e := newEnv(t, Config{Hedge: HedgeConfig{Enabled: true}}, members(0, 0))
		e.r.Latency(1).Reset(time.Second)
		for range health.MinQuantileSamples { // a latency quantile, so the hedge is armed
			_, _, err := e.do(1 << 0)
			require.NoError(t, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		entered, release := make(chan struct{}), make(chan struct{})
		seen := make(chan error, 1)
		fn := func(actx context.Context, m int) (int, error) {
			if m == 1 {
				return m, nil
			}
			close(entered)
			<-release
			<-actx.Done()
			seen <- actx.Err()
			return m, nil
		}
		res := make(chan doResult, 1)
		go func() {
			v, out, err := Do(ctx, e.r, "sign", AllMembers, fn)
			res <- doResult{v, out, err}
		}()
		<-entered
		e.blockUntil(2) // attempt deadline and hedge timer
		e.clk.Advance(e.r.cfg.Hedge.Floor)
		r := recv(t, res)
		require.NoError(t, r.err)
		require.Equal(t, 1, r.v, "the hedge won")
		cancel()
		close(release)
		require.Equal(t, context.Canceled, recv(t, seen), "the loser's context ends with the caller's")
	})
}

func TestDoAbandonedCap(t *testing.T) {
	tests := []struct {
		name        string
		cfg         Config
		otherServes bool
	}{
		{"per member", Config{MaxAbandonedPerMember: 1}, true},
		{"total", Config{MaxAbandonedTotal: 1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg, members(0, 0))
			e.fakes[0].hold.Store(true)
			res := e.goDo(context.Background(), 1<<0)
			e.entered(0)
			e.blockUntil(1)
			e.clk.Advance(50 * time.Millisecond)
			r := recv(t, res)
			require.ErrorIs(t, r.err, ErrNoMember)
			require.Equal(t, 1, r.out.Attempts)
			require.Equal(t, 1, e.abandoned())

			_, ok := e.r.Pick(1<<0, 0)
			require.False(t, ok, "member 0 is at the abandoned cap")
			require.True(t, e.r.Status()[0].AbandonedCap)
			_, out, err := e.do(1 << 0)
			require.ErrorIs(t, err, ErrNoMember)
			require.Zero(t, out.Attempts, "refused at once")
			require.Equal(t, int32(1), e.fakes[0].calls.Load())

			v, _, err := e.do(AllMembers)
			if tc.otherServes {
				require.NoError(t, err)
				require.Equal(t, 1, v)
			} else {
				require.ErrorIs(t, err, ErrNoMember, "the total cap stops everything")
			}

			e.fakes[0].hold.Store(false)
			e.fakes[0].release <- struct{}{}
			e.waitIdle(0)
			require.Zero(t, e.abandoned())
			m, ok := e.r.Pick(1<<0, 0)
			require.True(t, ok, "eligible again once the call returned")
			require.False(t, e.r.Status()[0].AbandonedCap)
			require.Zero(t, m)
		})
	}
}

// The caller's deadline (real, 20 ms) is shorter than the attempt deadline (fake clock, never reached).
func TestDoCallerContextEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(5*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{}, members(0, 0))
			e.r.Latency(1).Reset(time.Second)
			e.fakes[0].hold.Store(true) // ignores its context, like cgo
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			_, out, err := Do(ctx, e.r, "sign", AllMembers, e.fn)
			require.ErrorIs(t, err, tc.want)
			require.Less(t, time.Since(start), waitLong)
			require.Equal(t, Outcome{Member: 0, Attempts: 1}, out, "no retry after the caller left")
			require.Zero(t, e.fakes[1].calls.Load())
			a0 := e.obs.attemptsOf(0)
			require.Len(t, a0, 1)
			require.Equal(t, ClassCaller, a0[0].class)
			c := e.r.members[0].breaker.Counts()
			require.Zero(t, c.TotalFailures, "the caller's deadline is not the device's fault")
			require.Equal(t, uint32(1), c.TotalExclusions)
			require.Equal(t, 1, e.abandoned(), "the call still runs")
			e.fakes[0].release <- struct{}{}
			e.waitIdle(0)
			require.Zero(t, e.abandoned())

			// Already ended: nothing runs.
			_, out, err = Do(ctx, e.r, "sign", AllMembers, e.fn)
			require.ErrorIs(t, err, tc.want)
			require.Zero(t, out.Attempts)
		})
	}
}

func TestDoPanicReachesTheCaller(t *testing.T) {
	e := newEnv(t, Config{}, members(0))
	fn := func(context.Context, int) (int, error) { panic("bad member fn") }
	require.PanicsWithValue(t, "bad member fn", func() { _, _, _ = Do(context.Background(), e.r, "sign", AllMembers, fn) })
	require.Equal(t, ClassBusy, e.obs.attemptsOf(0)[0].class)
	require.Zero(t, e.inFlight(0))
}

func TestDoAfterClose(t *testing.T) {
	e := newEnv(t, Config{}, members(0))
	e.r.Close()
	e.r.Close()
	_, out, err := e.do(AllMembers)
	require.ErrorIs(t, err, ErrNoMember)
	require.ErrorIs(t, err, ErrClosed)
	require.Zero(t, out.Attempts)
}

func TestStatus(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 1))
	e.r.SetUp(1, false)
	e.fakes[0].hold.Store(true)
	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)

	st := e.r.Status()
	require.Equal(t, []MemberStatus{
		{Name: "m0", Tier: 0, Up: true, Breaker: "closed", EWMA: 5 * time.Millisecond, InFlight: 1},
		{Name: "m1", Tier: 1, Up: false, Breaker: "closed", EWMA: 100 * time.Millisecond},
	}, st)

	e.fakes[0].release <- struct{}{}
	require.NoError(t, recv(t, res).err)
	e.waitIdle(0)
	require.Zero(t, e.r.Status()[0].InFlight)
}

// Every attempt's outcome reaches its breaker and the observer exactly once, whatever the mix of
// successes, failures, caller errors, hangs past the deadline, callers leaving and hedges.
func TestExactlyOnceReporting(t *testing.T) {
	cfg := Config{
		AttemptTimeout:        []time.Duration{5 * time.Millisecond, 10 * time.Millisecond},
		MaxAbandonedPerMember: 1000,
		MaxAbandonedTotal:     1000,
		Breaker: BreakerConfig{ConsecutiveFailures: 1 << 30, MinRequests: 1 << 30, Window: time.Hour,
			OpenBase: time.Hour, OpenMax: time.Hour},
		Hedge: HedgeConfig{Enabled: true, Budget: 1, Floor: time.Millisecond, Quantile: 0.5},
	}
	cfg.Clock = health.RealClock() // real time, so deadlines, hangs and hedges interleave for real
	e := newEnv(t, cfg, members(0, 0, 0, 1))
	var mu sync.Mutex
	calls := make(map[int]int)
	fn := func(ctx context.Context, m int) (int, error) {
		mu.Lock()
		calls[m]++
		mu.Unlock()
		switch k := rand.IntN(10); k {
		case 0, 1, 2, 3:
			return m, nil
		case 4:
			return m, errClass(ClassBusy)
		case 5:
			return m, errClass(ClassCaller)
		case 6, 7:
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			return m, nil
		default:
			time.Sleep(15 * time.Millisecond) // past every attempt deadline, ignoring ctx
			return m, errClass(ClassDown)
		}
	}
	var wg sync.WaitGroup
	var attempts sync.Map
	for g := range 8 {
		wg.Go(func() {
			for i := range 60 {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if i%7 == 0 {
					ctx, cancel = context.WithTimeout(ctx, 2*time.Millisecond)
				}
				_, out, _ := Do(ctx, e.r, "sign", AllMembers, fn)
				cancel()
				attempts.Store(fmt.Sprint(g, i), out.Attempts)
			}
		})
	}
	wg.Wait()
	for i := range 4 {
		e.waitIdle(i)
	}
	total := 0
	attempts.Range(func(_, v any) bool { total += v.(int); return true })

	ev := e.obs.snapshot()
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, ev.attempts, total, "one AttemptDone per attempt started")
	perMember := map[int]int{}
	for _, a := range ev.attempts {
		perMember[a.member]++
	}
	for i, m := range e.r.members {
		c := m.breaker.Counts()
		require.Equal(t, gobreaker.StateClosed, m.breaker.State(), "one generation: the counts cover the whole run")
		require.Equal(t, int(c.Requests), perMember[i], "member %d: one AttemptDone per attempt admitted", i)
		require.Equal(t, c.Requests, c.TotalSuccesses+c.TotalFailures+c.TotalExclusions,
			"member %d: every admitted attempt reached the breaker exactly once: %+v", i, c)
		// fn is skipped for an attempt given up on before it started, never run twice.
		require.LessOrEqual(t, calls[i], perMember[i], "member %d", i)
	}
	for i, a := range ev.abandons {
		require.GreaterOrEqual(t, a.per, 0, "event %d", i)
		require.GreaterOrEqual(t, a.total, 0, "event %d", i)
	}
	require.NotEmpty(t, ev.abandons, "the mix included abandoned attempts")
	require.Zero(t, len(ev.abandons)%2, "every abandon was followed by its return")
	require.Zero(t, e.abandoned())
	require.NotEmpty(t, ev.hedges, "the mix included hedges")
}

// TestDoStalledTimeoutNotCounted: an attempt deadline that passed while the process itself stood still (the
// watchdog saw a stall after the attempt began) is retried elsewhere but not counted on the breaker, and
// does not make the member look slow.
func TestDoStalledTimeoutNotCounted(t *testing.T) {
	e := newEnv(t, Config{StallThreshold: time.Hour}, members(0, 0)) // the watchdog never fires on its own
	e.r.Latency(1).Reset(10 * time.Millisecond)                      // member 0 (5 ms) is tried first
	e.fakes[0].hold.Store(true)

	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(1)
	e.r.lastStall.Store(e.r.mono()) // what the watchdog records after a host hiccup
	e.clk.Advance(50 * time.Millisecond)
	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, Outcome{Member: 1, Attempts: 2}, r.out, "retried on the other member")

	a0 := e.obs.attemptsOf(0)
	require.Len(t, a0, 1)
	require.Equal(t, ClassStalled, a0[0].class)
	counts := e.r.members[0].breaker.Counts()
	require.Zero(t, counts.TotalFailures, "a stall is not the device's fault")
	require.Equal(t, uint32(1), counts.TotalExclusions)
	require.Equal(t, 5*time.Millisecond, e.r.Latency(0).Value(), "no latency peak from a stall")
	st := e.r.Status()[0]
	require.Equal(t, 1, st.Abandoned, "the call still holds its thread")
	require.False(t, st.AbandonedCap)
	require.Zero(t, e.r.members[0].hung.Load(), "nor is it a sign of a hung member (MaxAbandonedPerMember)")

	e.fakes[0].release <- struct{}{}
	e.waitIdle(0)
	require.Zero(t, e.r.Status()[0].Abandoned)
}

// TestDoStallFillsNoAbandonedCap: a stall of this process that abandons more calls on a member than
// MaxAbandonedPerMember leaves the member eligible: its calls were not hung, only not run.
func TestDoStallFillsNoAbandonedCap(t *testing.T) {
	e := newEnv(t, Config{StallThreshold: time.Hour, MaxAbandonedPerMember: 2}, members(0))
	e.fakes[0].hold.Store(true)
	var calls []<-chan doResult
	for range 3 {
		calls = append(calls, e.goDo(context.Background(), AllMembers))
		e.entered(0)
	}
	e.blockUntil(3)
	e.r.lastStall.Store(e.r.mono())
	e.clk.Advance(50 * time.Millisecond)
	for _, c := range calls {
		require.ErrorIs(t, recv(t, c).err, ErrNoMember) // one member, tried once: no retry after a stall
	}
	require.Equal(t, 3, e.abandoned())
	_, ok := e.r.Pick(AllMembers, 0)
	require.True(t, ok, "still eligible with 3 calls abandoned during a stall, over the cap of 2")
	e.fakes[0].hold.Store(false)
	for range 3 {
		e.fakes[0].release <- struct{}{}
	}
	e.waitIdle(0)
}

// TestDoStalledTimeoutStaysInTier: when the only other member of the tier is down, an attempt that timed
// out only because the process stalled is tried once more on the same member rather than sent to DR.
func TestDoStalledTimeoutStaysInTier(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stalled bool
		want    Outcome
	}{
		{name: "stall: second chance in tier", stalled: true, want: Outcome{Member: 0, Attempts: 2}},
		{name: "device timeout: on to DR", stalled: false, want: Outcome{Member: 2, Attempts: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{StallThreshold: time.Hour}, members(0, 0, 1))
			e.r.SetUp(1, false)
			e.fakes[0].hold.Store(true)

			res := e.goDo(context.Background(), AllMembers)
			e.entered(0)
			e.blockUntil(1)
			if tc.stalled {
				e.r.lastStall.Store(e.r.mono())
			}
			e.clk.Advance(50 * time.Millisecond)
			if tc.stalled {
				e.entered(0) // the second attempt, same member
				e.fakes[0].hold.Store(false)
				e.fakes[0].release <- struct{}{}
				e.fakes[0].release <- struct{}{}
			}
			r := recv(t, res)
			require.NoError(t, r.err)
			require.Equal(t, tc.want, r.out)
			if tc.stalled {
				require.Zero(t, e.fakes[2].calls.Load(), "a host stall never sends a call to DR")
			} else {
				e.fakes[0].release <- struct{}{}
			}
			e.waitIdle(0)
		})
	}
}

// TestStalledSince: a stall counts for attempts that began before it, not after.
func TestStalledSince(t *testing.T) {
	e := newEnv(t, Config{StallThreshold: 20 * time.Millisecond}, members(0))
	start := e.r.mono()
	require.False(t, e.r.stalledSince(start))
	// A stall cannot be forced portably; check the bookkeeping the watchdog feeds instead.
	e.r.lastStall.Store(e.r.mono())
	require.True(t, e.r.stalledSince(start))
	require.False(t, e.r.stalledSince(e.r.mono()+1), "a stall before the attempt began does not count")
}
