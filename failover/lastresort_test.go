package failover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeDeadline is a caller context whose deadline is on the fake clock. It ends only when the test ends
// it (end), as a real one would when the fake time reached its deadline.
type fakeDeadline struct {
	context.Context
	at time.Time
}

func (c fakeDeadline) Deadline() (time.Time, bool) { return c.at, true }

func (c fakeDeadline) Err() error {
	if c.Context.Err() != nil {
		return context.DeadlineExceeded
	}
	return nil
}

// stepTo advances the fake clock to at in steps of at most the members' attempt timeout (50 ms),
// waiting after each for the one timer a running last resort re-arms at its checkpoint.
func (e *env) stepTo(at time.Time) {
	e.t.Helper()
	for {
		left := at.Sub(e.clk.Now())
		if left <= 0 {
			return
		}
		e.clk.Advance(min(left, 50*time.Millisecond))
		e.blockUntil(1)
	}
}

func withFakeDeadline(t *testing.T, at time.Time) (ctx context.Context, end func()) {
	cctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	return fakeDeadline{cctx, at}, func() { cancel(context.DeadlineExceeded) }
}

// TestDoLastResortAttempt: an attempt on the only member that could still take the call runs to the
// caller's deadline; whenever another member could serve, a hung member is left at the attempt timeout.
func TestDoLastResortAttempt(t *testing.T) {
	const callerDeadline = 2 * time.Second
	tests := []struct {
		name       string
		cfg        Config
		ms         []MemberConfig
		mask       Mask
		setup      func(e *env) // member 0 is the one that hangs
		unblock    func(e *env) // after member 0's attempt timeout
		lastResort bool
	}{
		{name: "only member", ms: members(0), lastResort: true},
		{name: "other member down", ms: members(0, 0), setup: func(e *env) { e.r.SetUp(1, false) }, lastResort: true},
		{name: "other member not in mask", ms: members(0, 0), mask: 1 << 0, lastResort: true},
		{name: "no attempt left", cfg: Config{MaxAttempts: 1}, ms: members(0, 0), lastResort: true},
		{name: "other member breaker open", cfg: Config{DisablePanic: true}, ms: members(0, 0), setup: func(e *env) {
			e.fakes[1].setErr(errClass(ClassDown))
			for range 3 {
				_, _, err := e.do(1 << 1)
				require.ErrorIs(e.t, err, ErrNoMember)
			}
			e.fakes[1].setErr(nil)
		}, lastResort: true},
		{name: "other member at its abandoned cap", cfg: Config{MaxAbandonedPerMember: 1}, ms: members(0, 0), setup: func(e *env) {
			e.fakes[1].hold.Store(true)
			res := e.goDo(context.Background(), 1<<1)
			e.entered(1)
			e.blockUntil(1)
			e.clk.Advance(50 * time.Millisecond)
			require.ErrorIs(e.t, recv(e.t, res).err, ErrNoMember)
			e.fakes[1].hold.Store(false)
		}, lastResort: true},
		{name: "other member up", ms: members(0, 0), lastResort: false},
		{name: "other member in DR", ms: members(0, 1), lastResort: false},
		{name: "other member full", ms: []MemberConfig{{Name: "m0"}, {Name: "m1", Capacity: 1}}, setup: func(e *env) {
			e.fakes[1].hold.Store(true)
			e.goDo(context.Background(), 1<<1)
			e.entered(1)
			e.fakes[1].hold.Store(false)
		}, unblock: func(e *env) { e.fakes[1].release <- struct{}{} }, lastResort: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg, tc.ms)
			mask := tc.mask
			if mask == 0 {
				mask = AllMembers
			}
			for i := 1; i < len(tc.ms); i++ {
				e.r.Latency(i).Reset(time.Second) // member 0 is picked first
			}
			if tc.setup != nil {
				tc.setup(e)
			}
			pending, abandoned, start := e.clk.Pending(), e.abandoned(), e.clk.Now()
			e.fakes[0].hold.Store(true)
			ctx, _ := withFakeDeadline(t, start.Add(callerDeadline))
			res := e.goDo(ctx, mask)
			e.entered(0)
			e.blockUntil(pending + 1)
			e.clk.Advance(50 * time.Millisecond)
			if !tc.lastResort {
				if tc.unblock != nil {
					tc.unblock(e)
				}
				r := recv(t, res)
				require.NotEqual(t, 0, r.out.Member, "left at the attempt timeout: %+v", r)
				require.Equal(t, ClassDown, e.obs.attemptsOf(0)[0].class)
				return
			}
			// The attempt timeout was a checkpoint: the attempt runs on, one attempt timeout at a time.
			e.blockUntil(1)
			require.Equal(t, abandoned, e.abandoned(), "not given up on at the attempt timeout")
			e.stepTo(start.Add(callerDeadline - time.Nanosecond))
			require.Equal(t, 1, e.clk.Pending())
			notYet(t, res)
			e.fakes[0].release <- struct{}{}
			r := recv(t, res)
			require.NoError(t, r.err, "a slow last resort is not an error")
			require.Equal(t, Outcome{Member: 0, Attempts: 1}, r.out)
			a0 := e.obs.attemptsOf(0)
			require.Len(t, a0, 1)
			require.Equal(t, ClassNone, a0[0].class)
			require.Equal(t, callerDeadline-time.Nanosecond, a0[0].latency)
			require.Zero(t, e.r.members[0].breaker.Counts().TotalFailures)
		})
	}
}

// TestDoLastResortHangsToTheCallerDeadline: a hung last resort holds the caller exactly until its
// deadline, and the timeout still counts against the member (as the attempt timeout would have), whether
// the attempt timer or the caller's context ends it first.
func TestDoLastResortHangsToTheCallerDeadline(t *testing.T) {
	const callerDeadline = 2 * time.Second
	for _, callerFirst := range []bool{false, true} {
		name := map[bool]string{false: "attempt timer", true: "caller context"}[callerFirst]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, Config{}, members(0))
			e.fakes[0].hold.Store(true)
			ctx, end := withFakeDeadline(t, ft0.Add(callerDeadline))
			res := e.goDo(ctx, AllMembers)
			e.entered(0)
			e.blockUntil(1)
			e.stepTo(ft0.Add(callerDeadline - time.Nanosecond))
			notYet(t, res)
			if callerFirst {
				end()
			} else {
				e.clk.Advance(time.Nanosecond)
			}
			r := recv(t, res)
			require.Error(t, r.err)
			require.Equal(t, Outcome{Member: 0, Attempts: 1}, r.out)
			if !callerFirst {
				var te *AttemptTimeoutError
				require.ErrorAs(t, r.err, &te)
				require.Equal(t, callerDeadline, te.Timeout)
			}
			require.Equal(t, ClassDown, e.obs.attemptsOf(0)[0].class)
			require.Equal(t, uint32(1), e.r.members[0].breaker.Counts().TotalFailures)
			require.Equal(t, 1, e.abandoned())
		})
	}
}

// TestDoLastResortByTheDeadline: an attempt that reaches its deadline when no other member is left to go
// to (shut out while it ran) is not given up on: it runs on to the caller's deadline, whether this process
// stalled or the device was slow.
func TestDoLastResortByTheDeadline(t *testing.T) {
	for _, stalled := range []bool{false, true} {
		t.Run(map[bool]string{false: "slow device", true: "stalled process"}[stalled], func(t *testing.T) {
			e := newEnv(t, Config{StallThreshold: time.Hour}, members(0, 0))
			e.r.Latency(1).Reset(time.Second) // member 0 first
			e.fakes[0].hold.Store(true)
			ctx, _ := withFakeDeadline(t, ft0.Add(2*time.Second))
			res := e.goDo(ctx, AllMembers)
			e.entered(0)
			e.blockUntil(1) // the attempt timeout: member 1 could serve when the attempt began
			e.r.SetUp(1, false)
			if stalled {
				e.r.lastStall.Store(e.r.mono()) // a host hiccup while the attempt ran
			}
			e.clk.Advance(50 * time.Millisecond)
			e.blockUntil(1) // the new deadline
			require.Zero(t, e.abandoned(), "not given up on")
			notYet(t, res)
			e.fakes[0].release <- struct{}{}
			r := recv(t, res)
			require.NoError(t, r.err)
			require.Equal(t, Outcome{Member: 0, Attempts: 1}, r.out)
			require.Equal(t, ClassNone, e.obs.attemptsOf(0)[0].class)
		})
	}
}

// TestDoLastResortLeftWhenItsMemberFalls: a last resort whose own member goes down, or whose breaker
// opens, while it runs is left at its next checkpoint: the caller hears ErrNoMember within an attempt
// timeout instead of waiting for its own deadline on a device that may never answer (a killed device's
// stranded call). On a worker and inline (where fn's context ends at the checkpoint and fn returns).
func TestDoLastResortLeftWhenItsMemberFalls(t *testing.T) {
	const callerDeadline = 10 * time.Second
	for _, inline := range []bool{false, true} {
		for _, how := range []string{"health down", "down and up again", "breaker open"} {
			t.Run(fmt.Sprintf("inline=%v/%s", inline, how), func(t *testing.T) {
				ms := members(0)
				ms[0].Inline = inline
				e := newEnv(t, Config{}, ms)
				entered := make(chan struct{}, 1)
				fn := func(ctx context.Context, _ int) (int, error) {
					entered <- struct{}{}
					<-ctx.Done() // a call that answers only when given up on
					return 0, ctx.Err()
				}
				ctx, _ := withFakeDeadline(t, ft0.Add(callerDeadline))
				res := make(chan doResult, 1)
				go func() {
					v, out, err := Do(ctx, e.r, "sign", AllMembers, fn)
					res <- doResult{v: v, out: out, err: err}
				}()
				recv(t, entered)
				e.blockUntil(1)
				e.stepTo(ft0.Add(120 * time.Millisecond)) // two checkpoints passed: it ran on
				notYet(t, res)
				require.Zero(t, e.abandoned())
				switch how {
				case "health down":
					e.r.SetUp(0, false)
				case "down and up again":
					e.r.SetUp(0, false)
					e.r.SetUp(0, true)
				case "breaker open":
					// Another call's failure opens it (a faulty device trips the breaker at once).
					faulty := func(context.Context, int) (int, error) { return 0, errClass(ClassFaulty) }
					_, _, err := Do(context.Background(), e.r, "sign", AllMembers, faulty)
					require.Error(t, err)
					require.Equal(t, "open", e.r.Status()[0].Breaker)
				}
				e.clk.Advance(30 * time.Millisecond) // the next checkpoint, 150 ms after the start
				r := recv(t, res)
				require.ErrorIs(t, r.err, ErrNoMember)
				require.Equal(t, 1, r.out.Attempts)
				if !inline { // inline, the caller gets fn's own error: its context's end
					var te *AttemptTimeoutError
					require.ErrorAs(t, r.err, &te)
					require.Equal(t, 150*time.Millisecond, te.Timeout)
				}
				a0 := e.obs.attemptsOf(0)
				if how == "breaker open" {
					a0 = a0[1:] // the faulty call's
				}
				require.Len(t, a0, 1, "reported once")
				require.Equal(t, ClassDown, a0[0].class, "a timeout on its breaker")
				require.Equal(t, 150*time.Millisecond, a0[0].latency)
				e.waitIdle(0)
			})
		}
	}
}
