package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// keysPolicy: quick probes, so that a killed, paused or restarted device is seen in a second;
// withSync adds a quick background sync unless policy sets its own.
const keysPolicy = "health: {interval: 200ms, down_interval: 100ms}\nbreaker: {open_base: 200ms, open_max: 400ms}\n"

// openKeysCluster opens a cluster on topo with key_replication repl.
func openKeysCluster(t *testing.T, topo *softhsmtest.Topology, repl, policy string) *pkcs11ha.Cluster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: keysPolicy + withSync(policy), PartitionYAML: "key_replication: " + repl}))
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	if iso := os.Getenv("PKCS11HA_TEST_ISOLATION"); iso != "" && cfg.Policy.Isolation == "" {
		cfg.Policy.Isolation = iso
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := pkcs11ha.Open(ctx, cfg)
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl) // and allows the calls the library reports stuck for good (a killed device strands some)
	return cl
}

// devicePublicKey reads label's public key from one device itself — its own module and token, with
// pkcs11-tool, not through the cluster — or nil when the device has no such public key object.
// (pkcs11-tool 0.23 cannot rebuild P-384 public keys: "cannot create EVP_PKEY"; tests read P-256 and RSA.)
func devicePublicKey(t *testing.T, d *softhsmtest.Device, token, label string) crypto.PublicKey {
	t.Helper()
	der := harnesstest.DeviceObject(t, d, token, "pubkey", label)
	if der == nil {
		return nil
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err, "device %s", d.Name)
	return pub
}

// waitState waits until device's state in Status is want ("up" also accepts "degraded").
func waitState(t *testing.T, cl *pkcs11ha.Cluster, device, want string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, s := range cl.Status() {
			if s.Name == device {
				return s.State == want || (want == "up" && s.State == "degraded")
			}
		}
		return false
	}, 15*time.Second, 20*time.Millisecond, "%s becomes %s", device, want)
}

// signOnEach makes one signature served by each device in turn (the others refuse connections) and
// verifies it with the Go standard library.
func signOnEach(t *testing.T, topo *softhsmtest.Topology, cl *pkcs11ha.Cluster, partition, label string) {
	t.Helper()
	ctx := context.Background()
	k, err := cl.Key(ctx, partition, label)
	require.NoError(t, err)
	for _, d := range topo.Devices {
		for _, o := range topo.Devices {
			if o != d {
				require.NoError(t, o.Down())
			}
		}
		var out pkcs11ha.Outcome
		dg := digest(crypto.SHA256, "served by "+d.Name)
		require.Eventually(t, func() bool {
			sctx, cancel := context.WithTimeout(pkcs11ha.WithOutcome(ctx, &out), 2*time.Second)
			defer cancel()
			sig, err := k.SignContext(sctx, dg, crypto.SHA256)
			if err != nil || out.Device != d.Name {
				return false
			}
			switch pub := k.Public().(type) {
			case *rsa.PublicKey:
				require.NoError(t, rsa.VerifyPKCS1v15(pub, crypto.SHA256, dg, sig))
			case *ecdsa.PublicKey:
				require.True(t, ecdsa.VerifyASN1(pub, dg, sig))
			}
			return true
		}, 15*time.Second, 50*time.Millisecond, "a signature served by %s", d.Name)
		for _, o := range topo.Devices {
			require.NoError(t, o.Pass())
		}
		for _, o := range topo.Devices {
			waitState(t, cl, o.Name, "up")
		}
	}
}

// holds reports which devices' inventories hold label (with fingerprint fp, when not "").
func holds(t *testing.T, cl *pkcs11ha.Cluster, partition, label, fp string) map[string]bool {
	t.Helper()
	inv, err := cl.Inventory(context.Background(), partition)
	require.NoError(t, err)
	out := map[string]bool{}
	for _, d := range inv.Devices {
		for _, k := range d.Keys {
			if k.Label == label && (fp == "" || k.Fingerprint == fp) {
				out[d.Device] = true
			}
		}
	}
	return out
}

// TestKeysImport creates, serves and destroys keys on the harness's four separate-process devices with
// key_replication import: every device holds the identical public key (read from the device itself), a
// signature served by each verifies; a creation while a device is down succeeds by quorum; a destruction
// while a device is paused reaches it after it resumes, and the key never comes back.
func TestKeysImport(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Keys: []softhsmtest.KeySpec{}})
	cl := openKeysCluster(t, topo, "import", "")
	ctx, cancel := context.WithTimeout(pkcs11ha.WithActor(context.Background(), "test"), 2*time.Minute)
	defer cancel()
	all := []string{"eastus-1", "eastus-2", "westus-1", "westus-2"}

	for _, alg := range []string{pkcs11ha.KeyAlgRSA2048, pkcs11ha.KeyAlgECP256} {
		label := "gen-" + alg
		ki, err := cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: label, Algorithm: alg})
		require.NoError(t, err)
		require.Equal(t, all, ki.Devices)
		for _, d := range topo.Devices {
			pub := devicePublicKey(t, d, "payments", label)
			require.NotNil(t, pub, "device %s holds %s", d.Name, label)
			require.True(t, pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(ki.Public), "device %s holds the same public key", d.Name)
		}
		inv, err := cl.Inventory(ctx, "payments")
		require.NoError(t, err)
		for _, d := range inv.Devices {
			require.Len(t, d.Keys, 1+slicesIndex(alg), "%s: %+v", d.Device, d.Keys)
			for _, k := range d.Keys {
				require.True(t, k.Sensitive && !k.Extractable && k.Sign, "import: sensitive, never extractable: %+v", k)
			}
		}
		signOnEach(t, topo, cl, "payments", label)
		_, err = cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: label, Algorithm: alg})
		require.ErrorIs(t, err, pkcs11ha.ErrKeyExists)
	}

	// westus-2 killed: the quorum (min_key_replicas 2, every reachable device) is met without it.
	w2 := topo.Device("westus-2")
	require.NoError(t, w2.Kill())
	waitState(t, cl, "westus-2", "down")
	ki, err := cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: "while-w2-down", Algorithm: pkcs11ha.KeyAlgECP384})
	require.NoError(t, err)
	require.Equal(t, []string{"eastus-1", "eastus-2", "westus-1"}, ki.Devices)
	require.NoError(t, w2.Restart(ctx))
	waitState(t, cl, "westus-2", "up")
	rep, err := cl.SyncKeys(ctx, "payments", true)
	require.NoError(t, err)
	require.False(t, rep.Clean(), "import keeps no copy to restore westus-2 from")
	require.Len(t, rep.Missing, 1)
	require.Equal(t, "westus-2", rep.Missing[0].Device)

	// eastus-2 paused: the destruction succeeds, and eastus-2 loses the key once it resumes.
	e2 := topo.Device("eastus-2")
	require.NoError(t, e2.Pause())
	waitState(t, cl, "eastus-2", "down")
	fp := holds(t, cl, "payments", "gen-"+pkcs11ha.KeyAlgECP256, "")
	require.Len(t, fp, 3)
	require.NoError(t, cl.DestroyKey(ctx, "payments", "gen-"+pkcs11ha.KeyAlgECP256))
	_, err = cl.Key(ctx, "payments", "gen-"+pkcs11ha.KeyAlgECP256)
	require.ErrorIs(t, err, pkcs11ha.ErrUnknownKey)
	require.NoError(t, e2.Resume())
	waitState(t, cl, "eastus-2", "up")
	require.Eventually(t, func() bool {
		return len(holds(t, cl, "payments", "gen-"+pkcs11ha.KeyAlgECP256, "")) == 0
	}, 30*time.Second, 200*time.Millisecond, "the background sync removes the key from eastus-2")
	require.Nil(t, devicePublicKey(t, e2, "payments", "gen-"+pkcs11ha.KeyAlgECP256), "gone from the device itself")
	inv, err := cl.Inventory(ctx, "payments")
	require.NoError(t, err)
	for _, d := range inv.Devices {
		require.Equal(t, 1, d.Tombstones, "%s holds the tombstone", d.Device)
	}
	rep, err = cl.SyncKeys(ctx, "payments", false)
	require.NoError(t, err)
	require.Empty(t, holds(t, cl, "payments", "gen-"+pkcs11ha.KeyAlgECP256, ""), "never comes back")
	for _, a := range rep.Actions {
		require.NotEqual(t, "copy", a.Action, fmt.Sprintf("%+v", a))
	}
}

// slicesIndex is how many keys exist before alg's in TestKeysImport (RSA first, then EC).
func slicesIndex(alg string) int {
	if alg == pkcs11ha.KeyAlgRSA2048 {
		return 0
	}
	return 1
}

func withSync(policy string) string {
	if strings.Contains(policy, "key_sync_interval") {
		return policy
	}
	return policy + "key_sync_interval: 500ms\n"
}
