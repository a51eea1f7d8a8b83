package pkcs11ha

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

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
