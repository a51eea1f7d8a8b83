package pkcs11ha

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOutcomeContext: a call finds the caller's Outcome through deadlines derived from WithOutcome's
// context, resets it, and costs no allocation for it; a call without one finds nothing.
func TestOutcomeContext(t *testing.T) {
	out := Outcome{Device: "stale", Attempts: 3, Hedged: true}
	base := WithOutcome(context.Background(), &out)
	ctx, cancel := context.WithTimeout(base, time.Minute)
	defer cancel()
	require.Same(t, &out, startOutcome(ctx))
	require.Zero(t, out, "reset at the start of each call")
	require.Nil(t, startOutcome(context.Background()))
	require.Zero(t, testing.AllocsPerRun(100, func() {
		if startOutcome(ctx) != &out {
			t.Fatal("lost the Outcome")
		}
	}))
	require.Zero(t, testing.AllocsPerRun(100, func() {
		if startOutcome(context.Background()) != nil {
			t.Fatal("found an Outcome nobody asked for")
		}
	}))
}
