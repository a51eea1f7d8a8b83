package failover

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBadSignatureTripsAtOnce: one bad signature opens the member's breaker (no count of failures needed)
// and the call is served by another member; a later ordinary failure does not inherit the trip.
func TestBadSignatureTripsAtOnce(t *testing.T) {
	e := newEnv(t, Config{}, members(0, 0))
	e.r.Latency(1).Reset(e.r.Latency(0).Value() * 2) // member 0 first
	e.fakes[0].setErr(errClass(ClassFaulty))
	v, out, err := e.do(AllMembers)
	require.NoError(t, err)
	require.Equal(t, 1, v, "retried on the other member")
	require.Equal(t, 2, out.Attempts)
	require.Equal(t, "open", e.r.Status()[0].Breaker, "one bad signature opens the breaker")
	require.False(t, e.r.members[0].tripNow.Load())

	// Member 1: a plain failure after a bad signature was reported elsewhere does not trip it.
	e.fakes[1].setErr(errClass(ClassBusy))
	_, _, err = Do(context.Background(), e.r, "sign", 1<<1, e.fn)
	require.Error(t, err)
	require.Equal(t, "closed", e.r.Status()[1].Breaker)
}
