package devicebackend

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// oneDevice starts one SoftHSM device behind its relay and returns it with the library's device for it,
// not yet loaded (closed with the test).
func oneDevice(t *testing.T) (*softhsmtest.Device, *Device) {
	t.Helper()
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "d1", Region: "eastus"}}})
	d, err := NewDevice(harnessSettings(topo), 0, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { d.Close(time.Second) })
	return topo.Devices[0], d
}

// livenessWait bounds a wait for something that must happen without the device's help (a hung device is
// released only after it): reaching it means the code waited for the device, not that the host was slow.
// harnessSettings is the backend's settings for the harness's devices and partitions, with the library's
// default options (pkcs11ha/policy.go).
func harnessSettings(topo *softhsmtest.Topology) *Settings {
	s := &Settings{Own: Options{SessionPoolSize: 16, ReinitGrace: 2 * time.Second,
		InitTimeout: 5 * time.Second, CloseTimeout: 2 * time.Second, MaxStuckCalls: 1000, P11KitInstances: 1,
		OperationTimeout: 2 * time.Second, AdminTimeout: 30 * time.Second}}
	for _, d := range topo.Devices {
		s.Devices = append(s.Devices, DeviceSpec{Name: d.Name, Module: d.ModulePath, ModuleEnv: d.ModuleEnv})
	}
	for _, p := range topo.Partitions {
		s.Partitions = append(s.Partitions, PartitionSpec{Name: p.Name, TokenLabel: p.TokenLabel})
		s.PINs = append(s.PINs, p.PIN)
	}
	return s
}

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
	assert.True(t, errors.Is(err, errclass.ErrDeviceDown), "%v", err)
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
	assert.True(t, errors.Is(err, errclass.ErrDeviceDown), "%v", err)
	in := d.Mod.Current()
	require.NotNil(t, in)
	assert.EqualValues(t, 1, in.Inflight.Load(), "the token lookup is still in the module")

	require.NoError(t, dev.Pass())
	require.Eventually(t, func() bool { return in.Inflight.Load() == 0 }, 10*time.Second, 5*time.Millisecond)
}
