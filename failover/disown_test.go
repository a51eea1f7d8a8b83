package failover

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDisown: an attempt disowned by fn's owner stops counting as abandoned and stops holding a slot,
// whether it was disowned after its deadline or before; its late return changes nothing, and an attempt
// that finished is not touched.
func TestDisown(t *testing.T) {
	for _, tc := range []struct {
		name          string
		beforeTimeout bool
	}{
		{"after the deadline", false},
		{"while running", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{MaxAbandonedPerMember: 1}, members(0))
			got := make(chan Attempt, 1)
			release := make(chan struct{})
			returned := make(chan struct{})
			fn := func(ctx context.Context, m int) (int, error) {
				defer close(returned)
				got <- AttemptOf(ctx)
				<-release
				return m, nil
			}
			res := make(chan error, 1)
			go func() {
				_, _, err := Do(context.Background(), e.r, "sign", AllMembers, fn)
				res <- err
			}()
			a := recv(t, got)
			require.NotNil(t, a)
			e.blockUntil(1)
			if tc.beforeTimeout {
				a.Disown()
				require.Equal(t, 1, e.inFlight(0), "a running attempt keeps its slot until it is abandoned")
			}
			e.clk.Advance(50 * time.Millisecond)
			require.ErrorIs(t, recv(t, res), ErrNoMember)
			if !tc.beforeTimeout {
				require.Equal(t, 1, e.abandoned())
				_, ok := e.r.Pick(AllMembers, 0)
				require.False(t, ok, "at the abandoned cap")
				a.Disown()
				a.Disown() // idempotent
			}
			require.Zero(t, e.abandoned(), "a disowned attempt is not abandoned any more")
			require.Zero(t, e.inFlight(0), "nor does it hold a slot")
			require.Zero(t, e.r.Status()[0].Abandoned)
			_, ok := e.r.Pick(AllMembers, 0)
			require.True(t, ok, "the member is eligible again")
			require.Equal(t, uint32(1), e.r.members[0].breaker.Counts().TotalFailures, "the timeout still counted on the breaker")

			close(release)
			recv(t, returned)
			time.Sleep(10 * time.Millisecond) // let run() finish its bookkeeping, if it (wrongly) did any
			require.Zero(t, e.abandoned(), "the late return is not counted again")
			require.Zero(t, e.inFlight(0))
			if tc.beforeTimeout {
				require.Empty(t, e.obs.snapshot().abandons, "never counted as abandoned")
			} else {
				require.Equal(t, []abandonEvent{{0, 1, 1}, {0, 0, 0}}, e.obs.snapshot().abandons)
			}
		})
	}
}

func TestDisownFinishedAttemptIsNoop(t *testing.T) {
	e := newEnv(t, Config{}, members(0))
	var a Attempt
	_, _, err := Do(context.Background(), e.r, "sign", AllMembers, func(ctx context.Context, m int) (int, error) {
		a = AttemptOf(ctx)
		return m, nil
	})
	require.NoError(t, err)
	a.Disown()
	require.Zero(t, e.inFlight(0))
	require.Zero(t, e.abandoned())
	require.Empty(t, e.obs.snapshot().abandons)
	require.Nil(t, AttemptOf(context.Background()), "a context Do did not make has no attempt")
}
