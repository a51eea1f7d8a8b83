package pkcs11ha

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
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
	h, err := devicebackend.Modules.Acquire(dev.ModulePath, dev.ModuleEnv, 0)
	require.NoError(t, err)
	t.Cleanup(func() { devicebackend.Modules.Release(h, time.Second) })

	ctx := context.Background()
	h.Mu.Lock()
	in, err := h.Load(ctx, 8)
	require.NoError(t, err)
	h.Cur.Store(in)
	h.Mu.Unlock()
	slots, err := in.Ctx.GetSlotList(true)
	require.NoError(t, err)
	require.NotEmpty(t, slots)

	// A call that cannot return while the relay holds the bytes.
	require.NoError(t, dev.Hang())
	stuck := make(chan error, 1)
	d := &devicebackend.Device{Name: "d1"}
	rec, ok := in.Begin(ctx, d)
	require.True(t, ok)
	stuckBefore := devicebackend.StuckTotal.Load()
	go func() {
		defer in.End(rec)
		_, err := in.Ctx.GetTokenInfo(slots[0])
		stuck <- err
	}()
	time.Sleep(50 * time.Millisecond)
	require.EqualValues(t, 1, in.Inflight.Load())

	// Re-init: the stuck call outlives the grace, so the instance is retired; loading the fresh one blocks
	// on the hung device and gives up at the context's deadline.
	h.Mu.Lock()
	rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	set := (&settings{own: defaultOwn}).backend().Own
	set.ReinitGrace = 100 * time.Millisecond
	_, err = h.Reinit(rctx, &set, nil)
	cancel()
	h.Mu.Unlock()
	require.Error(t, err)
	require.True(t, in.Retired.Load(), "an instance with a stuck call is retired")
	_, ok = in.Begin(ctx, d)
	require.False(t, ok, "a retired instance takes no new call")
	require.EqualValues(t, 1, h.Retired.Load())
	require.EqualValues(t, 1, d.Stuck.Load(), "the stuck call is accounted to its device")
	require.EqualValues(t, stuckBefore+1, devicebackend.StuckTotal.Load(), "and in the total")
	require.Nil(t, h.Current())
	require.NotNil(t, h.Pending, "the blocked C_Initialize is remembered, not repeated")

	// The device answers again: the stuck call returns, and the next load adopts the pending instance.
	require.NoError(t, dev.Pass())
	select {
	case <-stuck:
	case <-time.After(10 * time.Second):
		t.Fatal("stuck call did not return after Pass")
	}
	// Its last stuck call returned: the retired instance is reclaimed and no longer counts against the cap.
	require.Eventually(t, func() bool { return h.Retired.Load() == 0 }, 5*time.Second, time.Millisecond)
	require.EqualValues(t, 1, h.Reclaimed.Load())
	require.Zero(t, d.Stuck.Load(), "a stuck call that returns stops counting")
	require.Equal(t, stuckBefore, devicebackend.StuckTotal.Load())
	h.Mu.Lock()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	fresh, err := h.Load(lctx, 8)
	cancel()
	if err == nil {
		h.Cur.Store(fresh)
	}
	h.Mu.Unlock()
	require.NoError(t, err)
	require.NotSame(t, in, fresh)
	require.Greater(t, fresh.Gen, in.Gen)
	slots, err = fresh.Ctx.GetSlotList(true)
	require.NoError(t, err)
	require.NotEmpty(t, slots, "the fresh instance sees the token")
	require.Zero(t, h.Retired.Load(), "adopting the pending load retired nothing more")
}

// TestSameLibraryTwiceRefused: one libsofthsm2.so path is one module; a second device with another
// SOFTHSM2_CONF on the same path would silently share the first one's tokens, so it is refused.
func TestSameLibraryTwiceRefused(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "a", Region: "r", InProcess: true}, {Name: "b", Region: "r", InProcess: true}}})
	a, b := topo.Devices[0], topo.Devices[1]
	ha, err := devicebackend.Modules.Acquire(a.ModulePath, a.ModuleEnv, 0)
	require.NoError(t, err)
	t.Cleanup(func() { devicebackend.Modules.Release(ha, time.Second) })
	ha.Mu.Lock()
	in, err := ha.Load(context.Background(), 8)
	require.NoError(t, err)
	ha.Cur.Store(in)
	ha.Mu.Unlock()

	hb, err := devicebackend.Modules.Acquire(a.ModulePath, b.ModuleEnv, 0) // a's file, b's config
	require.NoError(t, err)
	t.Cleanup(func() { devicebackend.Modules.Release(hb, time.Second) })
	hb.Mu.Lock()
	_, err = hb.Load(context.Background(), 8)
	hb.Mu.Unlock()
	require.ErrorContains(t, err, "one instance per file path")
}

// TestOpenWarmsOneSession: every open partition holds one idle session before any call, so a device's first
// call (DR's, when the local region is lost) costs no C_OpenSession round trip.
func TestOpenWarmsOneSession(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "westus-1", Region: "westus"}}})
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{}))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	cl, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cl.Close()) })
	for _, d := range cl.inprocDevices() {
		for _, p := range d.Parts {
			st := p.St.Load()
			require.NotNil(t, st, "%s/%s open", d.Name, p.Cfg.Name)
			require.Len(t, st.Pool.Idle, 1, "%s/%s: one warm session", d.Name, p.Cfg.Name)
			require.Len(t, st.Pool.Slots, 1, "%s/%s: the warm session counts against the pool size", d.Name, p.Cfg.Name)
		}
	}
}

// TestWaitDrained: a re-init waiting for the calls of a broken instance is woken by the last one to return,
// not by its grace period; the context still bounds the wait.
func TestWaitDrained(t *testing.T) {
	in := devicebackend.NewInstance(nil, 1, nil)
	require.True(t, in.Enter())
	require.True(t, in.Enter())
	in.Broken.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.WaitDrained(context.Background(), time.Hour)
	}()
	in.Exit()
	select {
	case <-done:
		t.Fatal("returned with a call still in the instance")
	case <-time.After(20 * time.Millisecond):
	}
	in.Exit()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the last call's return did not end the wait")
	}
	in.WaitDrained(context.Background(), time.Hour) // already drained: at once

	busy := devicebackend.NewInstance(nil, 2, nil)
	require.True(t, busy.Enter())
	busy.Broken.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	busy.WaitDrained(ctx, time.Hour) // the context ends the wait
	require.False(t, busy.Enter(), "a broken instance takes no new call")
	require.EqualValues(t, 1, busy.Inflight.Load())
}
