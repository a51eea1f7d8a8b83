package devicebackend

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// TestCallBoundedLeavesTheInstanceFirst: when callBounded returns, its call is no longer counted in flight
// on the instance. InitKEK and Inspect release their devices right after their last call; a call still
// counted then kept the module from being finalised, and the next load of it in the process failed as
// "already initialised by another device" (TestKeysWrap, about one run in four under load).
func TestCallBoundedLeavesTheInstanceFirst(t *testing.T) {
	in := newInstance(nil, 1, nil)
	d := &Device{Name: "d"}
	for range 5000 {
		v, err := callBounded(context.Background(), d, in, "C_Test", time.Minute, func(*pkcs11.Ctx) (int, error) { return 7, nil })
		require.NoError(t, err)
		require.Equal(t, 7, v)
		require.Zero(t, in.Inflight.Load(), "the call is out of the instance when callBounded returns")
	}
}
