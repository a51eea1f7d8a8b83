package pkcs11ha_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// key_replication wrap needs CKM_AES_KEY_WRAP_PAD, which p11-kit 0.24's RPC client drops from every
// module's mechanism list (measured: docs/keys.md): these tests run SoftHSM in each device's own worker
// process (policy.isolation process, in-process harness devices) instead of behind p11-kit server.

// wrapTopology is three in-process devices without keys, and its config path (key_replication wrap,
// isolation process).
func wrapTopology(t *testing.T, policy string) (*softhsmtest.Topology, string) {
	t.Helper()
	topo := harnesstest.Start(t, softhsmtest.Options{Keys: []softhsmtest.KeySpec{}, Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus", InProcess: true}, {Name: "eastus-2", Region: "eastus", InProcess: true},
		{Name: "westus-1", Region: "westus", InProcess: true}}})
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: keysPolicy + "isolation: process\n" + withSync(policy),
		PartitionYAML: "key_replication: wrap"}))
	return topo, path
}

func loadConfig(t *testing.T, path string) *pkcs11ha.Config {
	t.Helper()
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	return cfg
}

// initKEK runs the ceremony for payments and requires every device to get the KEK.
func initKEK(t *testing.T, path string, devices int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := pkcs11ha.InitKEK(ctx, loadConfig(t, path), "payments", "5678")
	require.NoError(t, err)
	require.Empty(t, rep.Refused)
	require.Len(t, rep.Done, devices)
}

// tokenDir is the SoftHSM directory of d's token labelled label.
func tokenDir(t *testing.T, d *softhsmtest.Device, label string) string {
	t.Helper()
	ents, err := os.ReadDir(d.TokenDir)
	require.NoError(t, err)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(d.TokenDir, e.Name(), "token.object"))
		if err == nil && bytes.Contains(b, []byte(label)) {
			return filepath.Join(d.TokenDir, e.Name())
		}
	}
	t.Fatalf("no token %q on %s", label, d.Name)
	return ""
}

// killWorker kills device's worker process: the next one loads the module afresh (what a device
// replaced or brought back looks like to an in-process module).
func killWorker(t *testing.T, cl *pkcs11ha.Cluster, device string) {
	t.Helper()
	for _, s := range cl.Status() {
		if s.Name == device {
			require.NotZero(t, s.WorkerPID)
			require.NoError(t, syscall.Kill(s.WorkerPID, syscall.SIGKILL))
			return
		}
	}
	t.Fatalf("no device %s", device)
}

// TestKeysWrap: with key_replication wrap, keys generated in one device reach the others wrapped under
// the trusted KEK, identical on every device and copyable only under a trusted key; a device that was
// away gets the keys made meanwhile from the background sync; an empty, freshly initialised token in
// place of a device gets every key back once the KEK ceremony has enrolled it.
func TestKeysWrap(t *testing.T) {
	topo, path := wrapTopology(t, "")
	initKEK(t, path, 3)
	ctx, cancel := context.WithTimeout(pkcs11ha.WithActor(context.Background(), "test"), 3*time.Minute)
	defer cancel()
	cl, err := pkcs11ha.Open(ctx, loadConfig(t, path))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cl.Close()) })
	all := []string{"eastus-1", "eastus-2", "westus-1"}

	for _, s := range []pkcs11ha.KeySpec{{Label: "w-rsa", Algorithm: pkcs11ha.KeyAlgRSA3072}, {Label: "w-ec", Algorithm: pkcs11ha.KeyAlgECP256}, {Label: "w-ec384", Algorithm: pkcs11ha.KeyAlgECP384}} {
		ki, err := cl.GenerateKey(ctx, "payments", s)
		require.NoError(t, err)
		require.Equal(t, all, ki.Devices)
		for _, d := range topo.Devices {
			if s.Algorithm == pkcs11ha.KeyAlgECP384 {
				require.Len(t, holds(t, cl, "payments", s.Label, ki.Fingerprint), 3)
				continue
			}
			pub := devicePublicKey(t, d, "payments", s.Label)
			require.NotNil(t, pub)
			require.True(t, pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(ki.Public), "%s on %s", s.Label, d.Name)
		}
		k, err := cl.Key(ctx, "payments", s.Label)
		require.NoError(t, err)
		dg := digest(crypto.SHA256, "wrap")
		sig, err := k.Sign(nil, dg, crypto.SHA256)
		require.NoError(t, err)
		require.NoError(t, verifyWith(k.Public(), dg, sig, crypto.SHA256))
	}
	inv, err := cl.Inventory(ctx, "payments")
	require.NoError(t, err)
	for _, d := range inv.Devices {
		require.Equal(t, 1, d.KEKs, d.Device)
		require.Len(t, d.Keys, 3, d.Device)
		for _, k := range d.Keys {
			require.True(t, k.Sensitive && k.Extractable && k.WrapWithTrusted, "wrappable only under a trusted key: %+v", k)
		}
	}

	// westus-1 away (its token gone from its module): a key made meanwhile reaches it once it is back.
	w1 := topo.Device("westus-1")
	dir := tokenDir(t, w1, "payments")
	require.NoError(t, os.Rename(dir, dir+".away"))
	killWorker(t, cl, "westus-1")
	waitState(t, cl, "westus-1", "down")
	ki, err := cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: "w-late", Algorithm: pkcs11ha.KeyAlgECP256})
	require.NoError(t, err)
	require.Equal(t, []string{"eastus-1", "eastus-2"}, ki.Devices)
	require.NoError(t, os.Rename(dir+".away", dir))
	back := time.Now()
	require.Eventually(t, func() bool { return holds(t, cl, "payments", "w-late", ki.Fingerprint)["westus-1"] }, 30*time.Second,
		100*time.Millisecond, "westus-1 holds the key within 30 s of its return")
	t.Logf("westus-1 held w-late %v after its return", time.Since(back).Round(time.Millisecond))
	require.True(t, devicePublicKey(t, w1, "payments", "w-late").(interface{ Equal(crypto.PublicKey) bool }).Equal(ki.Public))

	// eastus-1 replaced by an empty token: the sync cannot copy to it until the ceremony enrolls it.
	e1 := topo.Device("eastus-1")
	require.NoError(t, os.RemoveAll(tokenDir(t, e1, "payments")))
	tools, err := softhsmtest.LookupTools()
	require.NoError(t, err)
	cmd := exec.Command(tools.SoftHSMUtil, "--init-token", "--free", "--label", "payments", "--pin", "1234", "--so-pin", "5678")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+e1.ConfPath)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	killWorker(t, cl, "eastus-1")
	require.Eventually(t, func() bool {
		rep, err := cl.SyncKeys(ctx, "payments", true)
		return err == nil && len(rep.Missing) == 4 && rep.Missing[0].Device == "eastus-1"
	}, 30*time.Second, 200*time.Millisecond, "the empty eastus-1 lacks the four keys, and no KEK is shared with it")
	initKEK(t, path, 3)
	require.Eventually(t, func() bool {
		return len(holds(t, cl, "payments", "w-rsa", "")) == 3 && len(holds(t, cl, "payments", "w-ec", "")) == 3 &&
			len(holds(t, cl, "payments", "w-ec384", "")) == 3 &&
			len(holds(t, cl, "payments", "w-late", "")) == 3
	}, 30*time.Second, 200*time.Millisecond, "the background sync restores every key to eastus-1")
	rep, err := cl.SyncKeys(ctx, "payments", true)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "%+v", rep)
	require.Empty(t, rep.Actions)
}

// TestKeysRace: two clusters (two sidecars) generate the same label at the same moment: at most one
// succeeds, the other fails with ErrKeyExists (or ErrQuorum when a device refused its copy), and exactly
// the keys of the successful creations are left, on every device. In make chaos only (CHAOS_LONG=1): SoftHSM's file store shows one process the objects
// another wrote only once it reloads the token, so under load a racer can misjudge the other's key (about
// one run in fifteen); the gate keeps the binary's two-process race (TestKeysCLI), whose check allows it.
func TestKeysRace(t *testing.T) {
	if os.Getenv("CHAOS_LONG") == "" {
		t.Skip("make chaos only (CHAOS_LONG=1): SoftHSM's store lags between processes")
	}
	_, path := wrapTopology(t, "key_sync_interval: -1s\n")
	initKEK(t, path, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cls [2]*pkcs11ha.Cluster
	for i := range cls {
		cl, err := pkcs11ha.Open(ctx, loadConfig(t, path))
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, cl.Close()) })
		cls[i] = cl
	}
	for round := range 2 {
		label := "race-" + string(rune('a'+round))
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, cl := range cls {
			wg.Go(func() {
				<-start
				_, errs[i] = cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: label, Algorithm: pkcs11ha.KeyAlgECP256})
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.Is(err, pkcs11ha.ErrQuorum):
				// A device refused this racer's copy, e.g. SoftHSM's store answering CKR_FUNCTION_FAILED
				// while the other racer writes to it: the racer withdrew its key and says so (docs/keys.md,
				// "Concurrency": at worst no key, and the caller retries). What is left is checked below.
				t.Logf("round %d: a creation was refused: %v", round, err)
			default:
				require.ErrorIs(t, err, pkcs11ha.ErrKeyExists)
			}
		}
		require.LessOrEqual(t, won, 1, "round %d: %v", round, errs)
		// A device one cluster saw down during the race gets the key from the sync, as it would from the
		// background sync.
		_, err := cls[0].SyncKeys(ctx, "payments", false)
		require.NoError(t, err)
		// Read by a third cluster: SoftHSM's file store shows a process the objects another process
		// wrote only once it reloads the token, so the racers' own views may lag (real HSMs do not).
		fresh, err := pkcs11ha.Open(ctx, loadConfig(t, path))
		require.NoError(t, err)
		inv, err := fresh.Inventory(ctx, "payments")
		require.NoError(t, fresh.Close())
		require.NoError(t, err)
		fps := map[string]int{}
		for _, d := range inv.Devices {
			for _, k := range d.Keys {
				if k.Label == label {
					fps[k.Fingerprint]++
				}
			}
		}
		require.Len(t, fps, won, "round %d: one key when one creation succeeded: %v", round, fps)
		for _, n := range fps {
			require.Equal(t, 3, n, "on every device: %+v", inv)
		}
		t.Logf("round %d: %d of 2 creations succeeded: %v", round, won, errs)
	}
}
