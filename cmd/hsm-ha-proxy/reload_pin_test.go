package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// TestReloadFixesPIN: what SIGHUP runs re-reads the PINs; an inline PIN corrected in the config file
// brings back the partition whose token refused the old one, without a restart, after one login.
func TestReloadFixesPIN(t *testing.T) {
	devs := []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus", InProcess: true, PINOverride: map[string]string{"payments": "99999"}}}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: devs})
	cfgPath := filepath.Join(t.TempDir(), "sidecar.yaml")
	require.NoError(t, topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
		PolicyYAML:  "health: {interval: 50ms, down_interval: 50ms}",
		ServerYAML:  "listen: unix://" + filepath.Join(t.TempDir(), "s.sock"),
		ClientsYAML: "- {name: app, unix_uid: 0, partitions: [payments]}",
	}))
	cfg, err := sidecarconfig.Load(cfgPath)
	require.NoError(t, err)
	cl, err := pkcs11ha.Open(context.Background(), cfg.Library())
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl)
	ln, err := proxy.Listen(cfg.Server)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	srv := proxy.New(cfg, cl, nil, nil)
	require.False(t, cl.Status()[0].Partitions[0].Open)

	b, err := os.ReadFile(cfgPath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfgPath, []byte(strings.Replace(string(b), `pin: "1234"`, `pin: "99999"`, 1)), 0o600))
	reload(srv, cl, ln, cfgPath, slog.New(slog.DiscardHandler))
	require.Eventually(t, func() bool { return cl.Status()[0].Partitions[0].Open }, 10*time.Second, 10*time.Millisecond)
	require.EqualValues(t, 2, loginAttempts(cl, "eastus-1", "payments"), "the old PIN once at Open, the new one once")
}

// loginAttempts is partition's C_Login count on device, from the cluster's Status.
func loginAttempts(cl *pkcs11ha.Cluster, device, partition string) int64 {
	for _, ds := range cl.Status() {
		for _, p := range ds.Partitions {
			if ds.Name == device && p.Name == partition {
				return p.Logins
			}
		}
	}
	return 0
}
