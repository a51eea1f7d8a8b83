package pkcs11ha

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// oneDevice starts one SoftHSM device behind its relay and returns it with the library's device for it,
// not yet loaded (closed with the test).
func oneDevice(t *testing.T) (*softhsmtest.Device, *devicebackend.Device) {
	t.Helper()
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "d1", Region: "eastus"}}})
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{}))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	s, err := compile(cfg)
	require.NoError(t, err)
	d, err := devicebackend.NewDevice(s.backend(), 0, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { d.Close(time.Second) })
	return topo.Devices[0], d
}

// livenessWait bounds a wait for something that must happen without the device's help (a hung device is
// released only after it): reaching it means the code waited for the device, not that the host was slow.
const livenessWait = 30 * time.Second

// TestInspectCallBoundedAbandons: a call stuck in the module (the relay holds its bytes) is left running at its
// deadline and reported as a device-down error; it stays counted on the instance until it returns, so the
// instance is never finalised under it.
func TestInspectCallBoundedAbandons(t *testing.T) {
	dev, d := oneDevice(t)
	require.NoError(t, d.Open(context.Background()))
	in := d.Mod.Current()
	require.NotNil(t, in)
	ctx := context.Background()
	slots, err := callBounded(ctx, d, in, errclass.OpSlotList, time.Second, func(c *pkcs11.Ctx) ([]uint, error) { return c.GetSlotList(true) })
	require.NoError(t, err)
	require.NotEmpty(t, slots)

	require.NoError(t, dev.Hang())
	// The device stays hung until after the call returned: it returned at its own 200 ms deadline, not when the
	// device answered (and not at the test's liveness deadline either).
	live, cancel := context.WithTimeout(ctx, livenessWait)
	defer cancel()
	start := time.Now()
	_, err = callBounded(live, d, in, errclass.OpTokenInfo, 200*time.Millisecond, func(c *pkcs11.Ctx) (pkcs11.TokenInfo, error) { return c.GetTokenInfo(slots[0]) })
	t.Logf("returned after %v", time.Since(start))
	require.NoError(t, live.Err(), "the call's own deadline ended the wait")
	require.Error(t, err)
	assert.True(t, errors.Is(err, errCallStuck), "%v", err)
	assert.True(t, errors.Is(err, ErrDeviceDown), "%v", err)
	assert.EqualValues(t, 1, in.Inflight.Load(), "the abandoned call still counts on the instance")

	require.NoError(t, dev.Pass())
	require.Eventually(t, func() bool { return in.Inflight.Load() == 0 }, 10*time.Second, 5*time.Millisecond,
		"the call leaves the instance once the device answers")
}

// TestInspectOpenBoundedAbandons: a device that stops answering after its module loaded (the relay holds the
// bytes of the token lookup) is abandoned at the open deadline, reported as down, and not waited on.
func TestInspectOpenBoundedAbandons(t *testing.T) {
	dev, d := oneDevice(t)
	ctx := context.Background()
	require.NoError(t, loadBounded(ctx, d, time.Second).err)

	require.NoError(t, dev.Hang())
	live, cancel := context.WithTimeout(ctx, livenessWait)
	defer cancel()
	start := time.Now()
	err := openBounded(live, d, time.Second, 300*time.Millisecond)
	t.Logf("returned after %v", time.Since(start))
	require.NoError(t, live.Err(), "the open deadline ended the wait, with the device still hung")
	require.Error(t, err)
	assert.True(t, errors.Is(err, errCallStuck), "%v", err)
	assert.True(t, errors.Is(err, ErrDeviceDown), "%v", err)
	in := d.Mod.Current()
	require.NotNil(t, in)
	assert.EqualValues(t, 1, in.Inflight.Load(), "the token lookup is still in the module")

	require.NoError(t, dev.Pass())
	require.Eventually(t, func() bool { return in.Inflight.Load() == 0 }, 10*time.Second, 5*time.Millisecond)
}
