package failover

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// onCallersStack reports whether the function calling it runs under failover.Do on the same goroutine.
func onCallersStack() bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs)])
	for {
		f, more := frames.Next()
		if strings.Contains(f.Function, "failover.Do[") {
			return true
		}
		if !more {
			return false
		}
	}
}

func inlineMembers(n int) []MemberConfig {
	ms := members(make([]int, n)...)
	ms[0].Inline = true
	return ms
}

// TestDoInline: fn on an Inline member runs on the caller's goroutine; on the others (and as a hedge),
// on a worker.
func TestDoInline(t *testing.T) {
	e := newEnv(t, Config{}, inlineMembers(2))
	where := func(ctx context.Context, m int) (bool, error) { return onCallersStack(), nil }
	inline, out, err := Do(context.Background(), e.r, "sign", 1<<0, where)
	require.NoError(t, err)
	require.Equal(t, Outcome{Member: 0, Attempts: 1}, out)
	require.True(t, inline)
	inline, _, err = Do(context.Background(), e.r, "sign", 1<<1, where)
	require.NoError(t, err)
	require.False(t, inline)
	require.Zero(t, e.clk.Pending(), "the watchdog was stopped")
	require.Equal(t, ClassNone, e.obs.attemptsOf(0)[0].class)
}

// TestDoInlineHang: an inline call that hangs holds its caller (the declared risk), but the watchdog
// reports it at the attempt deadline, and while it is abandoned the member's next calls run on workers
// with the usual guarantee. The late result reaches the caller when fn returns.
func TestDoInlineHang(t *testing.T) {
	e := newEnv(t, Config{}, inlineMembers(2))
	e.r.Latency(1).Reset(time.Second) // member 0 first
	e.fakes[0].hold.Store(true)
	hung := e.goDo(context.Background(), AllMembers)
	e.entered(0)
	e.blockUntil(1) // the watchdog
	e.clk.Advance(50 * time.Millisecond)
	require.Eventually(t, func() bool { return e.abandoned() == 1 && len(e.obs.attemptsOf(0)) == 1 }, waitLong, time.Millisecond,
		"the watchdog abandons it and reports it")
	a0 := e.obs.attemptsOf(0)
	require.Len(t, a0, 1)
	require.Equal(t, ClassDown, a0[0].class)
	require.Equal(t, uint32(1), e.r.members[0].breaker.Counts().TotalFailures)
	notYet(t, hung)

	// The next call on member 0 runs on a worker: its attempt deadline frees the caller.
	next := e.goDo(context.Background(), 1<<0)
	e.entered(0)
	e.blockUntil(1)
	e.clk.Advance(50 * time.Millisecond)
	require.ErrorIs(t, recv(t, next).err, ErrNoMember)

	e.fakes[0].hold.Store(false)
	e.fakes[0].release <- struct{}{}
	e.fakes[0].release <- struct{}{}
	r := recv(t, hung)
	require.NoError(t, r.err, "the late success is returned")
	require.Equal(t, Outcome{Member: 0, Attempts: 1}, r.out)
	e.waitIdle(0)
	require.Zero(t, e.abandoned())
	require.Len(t, e.obs.attemptsOf(0), 2, "each attempt reported once")

	inline, _, err := Do(context.Background(), e.r, "sign", 1<<0, func(context.Context, int) (bool, error) { return onCallersStack(), nil })
	require.NoError(t, err)
	require.True(t, inline, "inline again once nothing is abandoned")
}

// TestDoInlineFollowsTheCaller: nobody else watches the caller's context while the caller runs fn, so
// fn's context follows it by itself.
func TestDoInlineFollowsTheCaller(t *testing.T) {
	e := newEnv(t, Config{}, inlineMembers(1))
	ctx, cancel := context.WithCancel(context.Background())
	_, _, err := Do(ctx, e.r, "sign", AllMembers, func(actx context.Context, _ int) (int, error) {
		require.NoError(t, actx.Err())
		cancel()
		require.ErrorIs(t, actx.Err(), context.Canceled)
		<-actx.Done()
		return 0, actx.Err()
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, ClassCaller, e.obs.attemptsOf(0)[0].class)
}

// TestDoInlineContextBound: an inline fn that returns when its context ends keeps the hang guarantee:
// the watchdog ends the context at the attempt deadline, and the call moves on to the next member.
func TestDoInlineContextBound(t *testing.T) {
	e := newEnv(t, Config{}, inlineMembers(2))
	e.r.Latency(1).Reset(time.Second) // member 0 first
	entered := make(chan struct{})
	fn := func(ctx context.Context, m int) (int, error) {
		if m == 0 {
			close(entered)
			<-ctx.Done() // a backend that waits on another process under the context
			return m, ctx.Err()
		}
		return m, nil
	}
	res := make(chan doResult, 1)
	go func() {
		v, out, err := Do(context.Background(), e.r, "sign", AllMembers, fn)
		res <- doResult{v, out, err}
	}()
	<-entered
	e.blockUntil(1) // the watchdog
	e.clk.Advance(50 * time.Millisecond)
	r := recv(t, res)
	require.NoError(t, r.err)
	require.Equal(t, Outcome{Member: 1, Attempts: 2}, r.out, "moved on at the attempt deadline")
	a0 := e.obs.attemptsOf(0)
	require.Len(t, a0, 1)
	require.Equal(t, ClassDown, a0[0].class, "reported as the timeout it was")
	e.waitIdle(0)
	require.Zero(t, e.abandoned())
}
