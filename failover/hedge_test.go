package failover

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func hedgeCfg(budget float64) Config {
	return Config{Hedge: HedgeConfig{Enabled: true, Budget: budget, Floor: 2 * time.Millisecond, Quantile: 0.95}}
}

// slowPrimary makes member 0 the preferred member with a known p95 of ~10 ms and returns the hedge delay.
func slowPrimary(e *env, samples int) time.Duration {
	e.t.Helper()
	for i := 1; i < len(e.r.members); i++ {
		e.r.Latency(i).Reset(time.Second)
	}
	for range samples {
		e.r.members[0].hist.Observe(10 * time.Millisecond)
	}
	d, ok := e.r.members[0].hist.Quantile(0.95)
	require.True(e.t, ok)
	require.Greater(e.t, d, 2*time.Millisecond)
	require.Less(e.t, d, 12*time.Millisecond)
	e.fakes[0].hold.Store(true)
	return d
}

func TestHedgeFiresAfterDelay(t *testing.T) {
	e := newEnv(t, hedgeCfg(1), members(0, 0, 1))
	d := slowPrimary(e, 100)

	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(2) // attempt deadline + hedge delay
	e.clk.Advance(d - time.Nanosecond)
	require.Equal(t, 2, e.clk.Pending(), "hedged early")
	notYet(t, res)
	e.clk.Advance(time.Nanosecond)

	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, 1, r.v)
	require.Equal(t, Outcome{Member: 1, Attempts: 2, Hedged: true}, r.out)
	ev := e.obs.snapshot()
	require.Equal(t, [][2]int{{0, 1}}, ev.hedges)
	require.Equal(t, []time.Time{ft0.Add(d)}, ev.hedgeAt)
	a1 := e.obs.attemptsOf(1)
	require.Len(t, a1, 1)
	require.True(t, a1[0].hedge)
	require.Zero(t, e.fakes[2].calls.Load())

	// The loser finishes later: its result is dropped but reported.
	require.Empty(t, e.obs.attemptsOf(0))
	e.fakes[0].release <- struct{}{}
	e.waitIdle(0)
	a0 := e.obs.attemptsOf(0)
	require.Len(t, a0, 1)
	require.Equal(t, ClassNone, a0[0].class)
	require.False(t, a0[0].hedge)
	e.blockUntil(0) // the watcher stopped the loser's deadline
}

func TestHedgeLoserHungPastItsDeadline(t *testing.T) {
	e := newEnv(t, hedgeCfg(1), members(0, 0))
	d := slowPrimary(e, 100)
	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(2)
	e.clk.Advance(d)
	require.True(t, recv(t, res).out.Hedged)

	// Do has returned; the loser's deadline is still enforced.
	e.blockUntil(1)
	e.clk.Advance(50*time.Millisecond - d)
	require.Eventually(t, func() bool { return len(e.obs.attemptsOf(0)) == 1 }, waitLong, time.Millisecond)
	require.Equal(t, 1, e.abandoned())
	a0 := e.obs.attemptsOf(0)
	require.Equal(t, ClassDown, a0[0].class)
	require.Equal(t, uint32(1), e.r.members[0].breaker.Counts().TotalFailures)

	e.fakes[0].release <- struct{}{}
	e.waitIdle(0)
	require.Zero(t, e.abandoned())
	require.Len(t, e.obs.attemptsOf(0), 1)
}

func TestHedgeNeverIntoTier1(t *testing.T) {
	e := newEnv(t, hedgeCfg(1), members(0, 0, 1))
	d := slowPrimary(e, 100)
	e.r.SetUp(1, false) // the only other tier-0 member is down; DR is fine

	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(2) // the hedge was armed...
	e.clk.Advance(d)
	e.blockUntil(1) // ...and fired
	e.fakes[0].release <- struct{}{}
	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, Outcome{Member: 0, Attempts: 1}, r.out)
	require.Zero(t, e.fakes[2].calls.Load(), "never hedge into DR")
	require.Empty(t, e.obs.snapshot().hedges)
}

func TestHedgeNeedsLatencySamples(t *testing.T) {
	e := newEnv(t, hedgeCfg(1), members(0, 0))
	e.r.Latency(1).Reset(time.Second)
	for range 19 { // one short of enough for a p95
		e.r.members[0].hist.Observe(10 * time.Millisecond)
	}
	e.fakes[0].hold.Store(true)

	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(1)
	e.clk.Advance(50*time.Millisecond - time.Nanosecond) // any armed hedge would have fired by now
	e.fakes[0].release <- struct{}{}
	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, Outcome{Member: 0, Attempts: 1}, r.out)
	require.Zero(t, e.fakes[1].calls.Load())
}

// Over 1000 calls to a slow member, hedges stay within Budget (+ the bucket's cap).
func TestHedgeBudget(t *testing.T) {
	e := newEnv(t, hedgeCfg(0.05), members(0, 0))
	// Many samples, so the slow member's own (delayed) completions do not move its p95 during the test.
	d := slowPrimary(e, 100_000)
	hedges := 0
	const calls = 1000
	for i := range calls {
		// A token will be there for this call's hedge iff the bucket reaches 1 with this call's deposit.
		expect := e.r.tokens.Load()+e.r.budget >= tokenUnit
		res := e.goDo(context.Background(), AllMembers)
		e.entered(0)
		e.blockUntil(2)
		e.clk.Advance(d)
		var r doResult
		if expect { // the hedge wins while the primary is still held
			r = recv(t, res)
			e.fakes[0].release <- struct{}{}
		} else {
			e.fakes[0].release <- struct{}{}
			r = recv(t, res)
		}
		require.NoError(t, r.err, "call %d", i)
		require.Equal(t, expect, r.out.Hedged, "call %d", i)
		if r.out.Hedged {
			hedges++
			require.Equal(t, 1, r.v)
		} else {
			require.Equal(t, 0, r.v)
		}
		e.waitIdle(0)
		e.blockUntil(0)
	}
	require.LessOrEqual(t, hedges, calls*5/100+10, "budget 5 %% + bucket cap")
	require.Equal(t, calls*5/100, hedges, "one hedge per 20 calls at Budget 0.05")
	require.Len(t, e.obs.snapshot().hedges, hedges)
	require.Equal(t, int32(hedges), e.fakes[1].calls.Load())
}

// A primary that has been slow long enough to fill its own histogram is hedged after what a healthy
// tier-0 member takes, not after its own (slow) p95.
func TestHedgeDelayFromFastestTierMember(t *testing.T) {
	e := newEnv(t, hedgeCfg(1), members(0, 0, 1))
	for i := 1; i < len(e.r.members); i++ {
		e.r.Latency(i).Reset(time.Second) // member 0 stays the preferred one
	}
	for range 100 {
		e.r.members[0].hist.Observe(30 * time.Millisecond)
		e.r.members[1].hist.Observe(3 * time.Millisecond)
		e.r.members[2].hist.Observe(100 * time.Microsecond) // DR: never a reference for tier 0
	}
	own, ok := e.r.members[0].hist.Quantile(0.95)
	require.True(t, ok)
	fast, ok := e.r.members[1].hist.Quantile(0.95)
	require.True(t, ok)
	require.Less(t, fast, own)
	require.Less(t, own, 50*time.Millisecond, "the primary's own p95 would also arm a hedge (before the deadline)")
	e.fakes[0].hold.Store(true)

	res := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(2)
	e.clk.Advance(fast - time.Nanosecond)
	notYet(t, res)
	e.clk.Advance(time.Nanosecond)
	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, Outcome{Member: 1, Attempts: 2, Hedged: true}, r.out)
	require.Equal(t, []time.Time{ft0.Add(fast)}, e.obs.snapshot().hedgeAt)
	require.Zero(t, e.fakes[2].calls.Load())

	e.fakes[0].release <- struct{}{}
	e.waitIdle(0)
	e.blockUntil(0)
}
