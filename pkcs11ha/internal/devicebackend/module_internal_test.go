package devicebackend

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestReinitRetiresStuckInstance drives the module registry against a real p11-kit device whose bytes are
// held by the relay: a call stuck in the module keeps the instance from being finalised, so after the grace
// period it is retired (never finalised, never used again); the fresh instance's C_Initialize blocks too and
// is adopted once the device answers again, instead of piling up blocked loads.
func TestReinitRetiresStuckInstance(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "d1", Region: "r"}}})
	dev := topo.Devices[0]
	h, err := modules.acquire(dev.ModulePath, dev.ModuleEnv, 0)
	require.NoError(t, err)
	t.Cleanup(func() { modules.release(h, time.Second) })

	ctx := context.Background()
	h.mu.Lock()
	in, err := h.load(ctx, 8)
	require.NoError(t, err)
	h.Cur.Store(in)
	h.mu.Unlock()
	slots, err := in.ctx.GetSlotList(true)
	require.NoError(t, err)
	require.NotEmpty(t, slots)

	// A call that cannot return while the relay holds the bytes.
	require.NoError(t, dev.Hang())
	stuck := make(chan error, 1)
	d := &Device{Name: "d1"}
	rec, ok := in.begin(ctx, d)
	require.True(t, ok)
	stuckBefore := stuckTotal.Load()
	go func() {
		defer in.end(rec)
		_, err := in.ctx.GetTokenInfo(slots[0])
		stuck <- err
	}()
	time.Sleep(50 * time.Millisecond)
	require.EqualValues(t, 1, in.Inflight.Load())

	// Re-init: the stuck call outlives the grace, so the instance is retired; loading the fresh one blocks
	// on the hung device and gives up at the context's deadline.
	h.mu.Lock()
	rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	set := harnessSettings(topo).Own
	set.ReinitGrace = 100 * time.Millisecond
	_, err = h.reinit(rctx, &set, nil)
	cancel()
	h.mu.Unlock()
	require.Error(t, err)
	require.True(t, in.retired.Load(), "an instance with a stuck call is retired")
	_, ok = in.begin(ctx, d)
	require.False(t, ok, "a retired instance takes no new call")
	require.EqualValues(t, 1, h.retired.Load())
	require.EqualValues(t, 1, d.stuck.Load(), "the stuck call is accounted to its device")
	require.EqualValues(t, stuckBefore+1, stuckTotal.Load(), "and in the total")
	require.Nil(t, h.Current())
	require.NotNil(t, h.pending, "the blocked C_Initialize is remembered, not repeated")

	// The device answers again: the stuck call returns, and the next load adopts the pending instance.
	require.NoError(t, dev.Pass())
	select {
	case <-stuck:
	case <-time.After(10 * time.Second):
		t.Fatal("stuck call did not return after Pass")
	}
	// Its last stuck call returned: the retired instance is reclaimed and no longer counts against the cap.
	require.Eventually(t, func() bool { return h.retired.Load() == 0 }, 5*time.Second, time.Millisecond)
	require.EqualValues(t, 1, h.reclaimed.Load())
	require.Zero(t, d.stuck.Load(), "a stuck call that returns stops counting")
	require.Equal(t, stuckBefore, stuckTotal.Load())
	h.mu.Lock()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	fresh, err := h.load(lctx, 8)
	cancel()
	if err == nil {
		h.Cur.Store(fresh)
	}
	h.mu.Unlock()
	require.NoError(t, err)
	require.NotSame(t, in, fresh)
	require.Greater(t, fresh.Gen, in.Gen)
	slots, err = fresh.ctx.GetSlotList(true)
	require.NoError(t, err)
	require.NotEmpty(t, slots, "the fresh instance sees the token")
	require.Zero(t, h.retired.Load(), "adopting the pending load retired nothing more")
}

// TestSameLibraryTwiceRefused: one libsofthsm2.so path is one module; a second device with another
// SOFTHSM2_CONF on the same path would silently share the first one's tokens, so it is refused.
func TestSameLibraryTwiceRefused(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "a", Region: "r", InProcess: true}, {Name: "b", Region: "r", InProcess: true}}})
	a, b := topo.Devices[0], topo.Devices[1]
	ha, err := modules.acquire(a.ModulePath, a.ModuleEnv, 0)
	require.NoError(t, err)
	t.Cleanup(func() { modules.release(ha, time.Second) })
	ha.mu.Lock()
	in, err := ha.load(context.Background(), 8)
	require.NoError(t, err)
	ha.Cur.Store(in)
	ha.mu.Unlock()

	hb, err := modules.acquire(a.ModulePath, b.ModuleEnv, 0) // a's file, b's config
	require.NoError(t, err)
	t.Cleanup(func() { modules.release(hb, time.Second) })
	hb.mu.Lock()
	_, err = hb.load(context.Background(), 8)
	hb.mu.Unlock()
	require.ErrorContains(t, err, "one instance per file path")
}

// TestWaitDrained: a re-init waiting for the calls of a broken instance is woken by the last one to return,
// not by its grace period; the context still bounds the wait.
func TestWaitDrained(t *testing.T) {
	in := newInstance(nil, 1, nil)
	require.True(t, in.enter())
	require.True(t, in.enter())
	in.Broken.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.waitDrained(context.Background(), time.Hour)
	}()
	in.exit()
	select {
	case <-done:
		t.Fatal("returned with a call still in the instance")
	case <-time.After(20 * time.Millisecond):
	}
	in.exit()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the last call's return did not end the wait")
	}
	in.waitDrained(context.Background(), time.Hour) // already drained: at once

	busy := newInstance(nil, 2, nil)
	require.True(t, busy.enter())
	busy.Broken.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	busy.waitDrained(ctx, time.Hour) // the context ends the wait
	require.False(t, busy.enter(), "a broken instance takes no new call")
	require.EqualValues(t, 1, busy.Inflight.Load())
}
