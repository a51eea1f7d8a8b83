package kmsdoor

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmsservice "k8s.io/kms/pkg/service"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// serveDoor opens a cluster on topo, serves the door for the key label of payments on a fresh socket and
// returns the Kubernetes API server's own KMS v2 client for it (k8s.io/apiserver's kmsv2 gRPC service).
func serveDoor(t *testing.T, topo *softhsmtest.Topology, label string) (kmsservice.Service, *pkcs11ha.Cluster) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{
		PolicyYAML: "gcm_fallback: true\nhealth: {interval: 200ms, down_interval: 100ms}"}))
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := pkcs11ha.Open(ctx, cfg)
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl)

	dir, err := os.MkdirTemp("", "kms") // a short path: unix sockets allow 107 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kms.sock")
	door, err := Listen(sock)
	require.NoError(t, err)
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- door.Serve(sctx, New(cl, "payments", label, 5*time.Second, nil), time.Second) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-done)
		_, err := os.Stat(sock)
		require.True(t, os.IsNotExist(err), "the socket is removed")
	})
	cctx, closeClient := context.WithCancel(context.Background()) // the client's connection lives as long
	t.Cleanup(closeClient)
	client, err := kmsv2.NewGRPCService(cctx, "unix://"+sock, "hsm-ha-test", 5*time.Second)
	require.NoError(t, err)
	return client, cl
}

// TestKMSv2ThroughAPIServerClient: the API server's KMS v2 client encrypts, decrypts and reads the status
// through the door; every ciphertext is AES-GCM under the HSM key (checked with Go's AES-GCM and the key's
// real value); a device kill costs nothing; a rotation changes key_id and old ciphertexts stay readable.
func TestKMSv2ThroughAPIServerClient(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{SecretKeys: []softhsmtest.SecretKeySpec{
		{Label: "kms-key", ID: []byte{0x20}, Kind: softhsmtest.KindAES256},
		{Label: "kms-key-2", ID: []byte{0x21}, Kind: softhsmtest.KindAES256},
		{Label: "mac-key", ID: []byte{0x22}, Kind: softhsmtest.KindHMACSHA256},
	}})
	client, cl := serveDoor(t, topo, "kms-key")
	ctx := context.Background()

	st, err := client.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, "v2", st.Version)
	require.Equal(t, "ok", st.Healthz)
	k, err := cl.SecretKey(ctx, "payments", "kms-key")
	require.NoError(t, err)
	require.Equal(t, "pkcs11-ha:payments/kms-key:"+k.CheckValue(), st.KeyID)

	blk, err := aes.NewCipher(topo.SecretKeys["kms-key"])
	require.NoError(t, err)
	g, err := cipher.NewGCM(blk)
	require.NoError(t, err)
	roundTrip := func(t *testing.T, client kmsservice.Service, uid string) (*kmsservice.EncryptResponse, []byte) {
		t.Helper()
		seed := []byte("a 32-byte DEK seed for the test!")
		res, err := client.Encrypt(ctx, uid, seed)
		require.NoError(t, err)
		pt, err := client.Decrypt(ctx, uid, &kmsservice.DecryptRequest{Ciphertext: res.Ciphertext, KeyID: res.KeyID})
		require.NoError(t, err)
		require.Equal(t, seed, pt)
		return res, seed
	}
	res, seed := roundTrip(t, client, "uid-1")
	require.Equal(t, st.KeyID, res.KeyID)
	pt, err := g.Open(nil, res.Ciphertext[:12], res.Ciphertext[12:], aad(res.KeyID))
	require.NoError(t, err, "AES-GCM under the HSM key, bound to the key_id")
	require.Equal(t, seed, pt)

	// A ciphertext presented under another key_id, or tampered, does not open.
	_, err = client.Decrypt(ctx, "uid-2", &kmsservice.DecryptRequest{Ciphertext: res.Ciphertext, KeyID: res.KeyID + "0"})
	require.Error(t, err)
	bad := bytes.Clone(res.Ciphertext)
	bad[len(bad)-1] ^= 1
	_, err = client.Decrypt(ctx, "uid-3", &kmsservice.DecryptRequest{Ciphertext: bad, KeyID: res.KeyID})
	require.Error(t, err)

	// A device killed: the API server sees nothing.
	require.NoError(t, topo.Device("eastus-1").Kill())
	for i := range 20 {
		roundTrip(t, client, "after-kill-"+string(rune('a'+i)))
	}
	st, err = client.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, "ok", st.Healthz)
	for _, d := range cl.Status() {
		require.True(t, d.Breaker == "closed" || d.Name == "eastus-1", "%s: refused ciphertexts are counted on no breaker", d.Name)
	}

	// Rotation: the door configured with the new key hands out a new key_id; the old ciphertext still opens.
	client2, _ := serveDoor(t, topo, "kms-key-2")
	st2, err := client2.Status(ctx)
	require.NoError(t, err)
	require.NotEqual(t, st.KeyID, st2.KeyID)
	pt, err = client2.Decrypt(ctx, "uid-4", &kmsservice.DecryptRequest{Ciphertext: res.Ciphertext, KeyID: res.KeyID})
	require.NoError(t, err)
	require.Equal(t, seed, pt)
	res2, _ := roundTrip(t, client2, "uid-5")
	require.Equal(t, st2.KeyID, res2.KeyID)

	// With every device down, Status is not healthy and Encrypt fails.
	for _, d := range topo.Devices[1:] {
		require.NoError(t, d.Kill())
	}
	require.Eventually(t, func() bool {
		st, err := client.Status(ctx)
		return err == nil && st.Healthz != "ok"
	}, 10*time.Second, 50*time.Millisecond)
	_, err = client.Encrypt(ctx, "uid-6", seed)
	require.Error(t, err)
}

// TestKMSKeyIDParsing: key_ids are this door's own shape; labels may contain ":" and "/".
func TestKMSKeyIDParsing(t *testing.T) {
	for _, tc := range []struct {
		id             string
		ok             bool
		part, lbl, kcv string
	}{
		{"pkcs11-ha:payments/kms-key:0011223344556677", true, "payments", "kms-key", "0011223344556677"},
		{"pkcs11-ha:payments/a:b/c:0011", true, "payments", "a:b/c", "0011"},
		{"pkcs11-ha:payments/kms-key:", false, "", "", ""},
		{"pkcs11-ha:/kms-key:00", false, "", "", ""},
		{"other:payments/kms-key:00", false, "", "", ""},
		{"", false, "", "", ""},
	} {
		p, l, k, err := parseKeyID(tc.id)
		if !tc.ok {
			require.Error(t, err, tc.id)
			continue
		}
		require.NoError(t, err, tc.id)
		require.Equal(t, []string{tc.part, tc.lbl, tc.kcv}, []string{p, l, k})
	}
}
