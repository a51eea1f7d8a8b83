package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmsservice "k8s.io/kms/pkg/service"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestBinaryKMSDoor: `serve` with server.kms serves the KMS v2 API to the Kubernetes API server's own
// client, through the worker-isolated cluster, and removes the socket on SIGTERM.
func TestBinaryKMSDoor(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SoftHSM devices")
	}
	bin := buildBinary(t)
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: softhsmtest.DefaultTopology(2 * time.Millisecond),
		SecretKeys: []softhsmtest.SecretKeySpec{{Label: "kms-key", ID: []byte{0x20}, Kind: softhsmtest.KindAES256}}})
	sockDir, err := os.MkdirTemp("", "hp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	kmsSock := filepath.Join(sockDir, "kms.sock")
	cfg := filepath.Join(t.TempDir(), "sidecar.yaml")
	require.NoError(t, topo.WriteConfig(cfg, softhsmtest.ConfigOptions{
		PolicyYAML:  "gcm_fallback: true",
		ServerYAML:  fmt.Sprintf("listen: unix://%s\nkms: unix://%s", filepath.Join(sockDir, "api.sock"), kmsSock),
		ClientsYAML: fmt.Sprintf("- {name: me, unix_uid: %d, partitions: [payments]}", os.Getuid()),
	}))
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("kms: {partition: payments, key: kms-key}\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())

	cmd, exited, stderr := startServe(t, bin, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, err := kmsv2.NewGRPCService(ctx, "unix://"+kmsSock, "hsm-ha-test", 5*time.Second)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		sctx, c := context.WithTimeout(ctx, time.Second)
		defer c()
		st, err := client.Status(sctx)
		return err == nil && st.Healthz == "ok"
	}, 30*time.Second, 50*time.Millisecond, "the KMS door answers healthy; stderr:\n%s", stderr)
	res, err := client.Encrypt(ctx, "uid-1", []byte("seed"))
	require.NoError(t, err)
	pt, err := client.Decrypt(ctx, "uid-1", &kmsservice.DecryptRequest{Ciphertext: res.Ciphertext, KeyID: res.KeyID})
	require.NoError(t, err)
	require.Equal(t, "seed", string(pt))
	fi, err := os.Stat(kmsSock)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	cancel()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "exit 0 on SIGTERM; stderr:\n%s", stderr)
		exited <- err // for startServe's cleanup
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit on SIGTERM; stderr:\n%s", stderr)
	}
	_, err = os.Stat(kmsSock)
	require.True(t, os.IsNotExist(err), "the KMS socket is removed")
}
