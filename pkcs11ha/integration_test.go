package pkcs11ha_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// TestMain fails the binary on leaked goroutines, tolerating only the calls the library reports stuck for
// good in retired module instances (a p11-kit bug; see package leakcheck).
func TestMain(m *testing.M) { leakcheck.Main(m) }

// gateDeadlines is what openCluster adds to a policy that does not set attempt_timeout: deadlines no
// healthy device misses on a loaded host (with the default 50 ms, one device that a busy host schedules late
// fails the call: there is nowhere else to go). Tests about deadlines set their own.
const gateDeadlines = "attempt_timeout: {local: 1s, dr: 2s}"

// openCluster writes the topology's config and opens a cluster on it; the cluster is closed at cleanup.
func openCluster(t testing.TB, topo *softhsmtest.Topology, policy string, opts ...pkcs11ha.Option) (*pkcs11ha.Cluster, *pkcs11ha.Config) {
	t.Helper()
	if !strings.Contains(policy, "attempt_timeout") {
		policy = strings.TrimSpace(policy + "\n" + gateDeadlines)
	}
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}))
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	applyIsolation(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := pkcs11ha.Open(ctx, cfg, opts...)
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl) // and allows the calls the library reports stuck for good
	return cl, cfg
}

// applyIsolation runs the whole suite on the other backend: go test with PKCS11HA_TEST_ISOLATION=process.
func applyIsolation(cfg *pkcs11ha.Config) {
	if iso := os.Getenv("PKCS11HA_TEST_ISOLATION"); iso != "" && cfg.Policy.Isolation == "" {
		cfg.Policy.Isolation = iso
	}
}

func inProcess(names ...string) []softhsmtest.DeviceSpec {
	var out []softhsmtest.DeviceSpec
	for _, n := range names {
		out = append(out, softhsmtest.DeviceSpec{Name: n, Region: "eastus", InProcess: true})
	}
	return out
}

func digest(h crypto.Hash, msg string) []byte {
	d := h.New()
	d.Write([]byte(msg))
	return d.Sum(nil)
}

// TestSignAllAlgorithms signs with every supported mechanism on in-process SoftHSM devices (Ed25519 cannot
// cross p11-kit 0.24's RPC) and verifies each signature with the Go standard library.
func TestSignAllAlgorithms(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a", "dev-b")})
	cl, _ := openCluster(t, topo, "")
	ctx := context.Background()

	rsaKey, err := cl.Key(ctx, "payments", "rsa-key")
	require.NoError(t, err)
	rsaPub := rsaKey.Public().(*rsa.PublicKey)
	require.True(t, rsaPub.Equal(topo.Keys["rsa-key"].Public()), "public key read from the token matches the imported one")

	for _, h := range []crypto.Hash{crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		t.Run("RSA_PKCS1_"+h.String(), func(t *testing.T) {
			d := digest(h, "pkcs1 "+h.String())
			sig, err := rsaKey.Sign(rand.Reader, d, h)
			require.NoError(t, err)
			require.NoError(t, rsa.VerifyPKCS1v15(rsaPub, h, d, sig))
		})
	}
	t.Run("RSA_PKCS1_raw", func(t *testing.T) {
		// crypto.Hash(0): the input is signed as is (e.g. a TLS 1.1 MD5+SHA1 concatenation).
		in := make([]byte, 36)
		_, _ = rand.Read(in)
		sig, err := rsaKey.Sign(rand.Reader, in, crypto.Hash(0))
		require.NoError(t, err)
		require.NoError(t, rsa.VerifyPKCS1v15(rsaPub, crypto.Hash(0), in, sig))
	})
	for _, tc := range []struct {
		name string
		h    crypto.Hash
		salt int
		vfy  int
	}{
		{"auto_sha256", crypto.SHA256, rsa.PSSSaltLengthAuto, rsa.PSSSaltLengthAuto},
		{"equals_hash_sha256", crypto.SHA256, rsa.PSSSaltLengthEqualsHash, 32},
		{"explicit_20_sha384", crypto.SHA384, 20, 20},
		{"equals_hash_sha512", crypto.SHA512, rsa.PSSSaltLengthEqualsHash, 64},
	} {
		t.Run("RSA_PSS_"+tc.name, func(t *testing.T) {
			d := digest(tc.h, "pss")
			sig, err := rsaKey.Sign(rand.Reader, d, &rsa.PSSOptions{SaltLength: tc.salt, Hash: tc.h})
			require.NoError(t, err)
			require.NoError(t, rsa.VerifyPSS(rsaPub, tc.h, d, sig, &rsa.PSSOptions{SaltLength: tc.vfy, Hash: tc.h}))
			if tc.salt == rsa.PSSSaltLengthAuto {
				// Auto means the largest salt, as crypto/rsa does: verifying with an exact hash-length salt fails.
				require.Error(t, rsa.VerifyPSS(rsaPub, tc.h, d, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: tc.h}))
			}
		})
	}
	for _, label := range []string{"ec-key", "ec384-key"} {
		k, err := cl.Key(ctx, "ledger", label)
		require.NoError(t, err)
		pub := k.Public().(*ecdsa.PublicKey)
		require.True(t, pub.Equal(topo.Keys[label].Public()))
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			t.Run("ECDSA_"+label+"_"+h.String(), func(t *testing.T) {
				d := digest(h, "ecdsa")
				sig, err := k.Sign(rand.Reader, d, h)
				require.NoError(t, err)
				require.True(t, ecdsa.VerifyASN1(pub, d, sig), "DER signature verifies")
			})
		}
	}
	t.Run("Ed25519", func(t *testing.T) {
		k, err := cl.Key(ctx, "payments", "ed-key")
		require.NoError(t, err)
		pub := k.Public().(ed25519.PublicKey)
		require.True(t, pub.Equal(topo.Keys["ed-key"].Public()))
		msg := []byte("an Ed25519 message, not a digest")
		sig, err := k.Sign(rand.Reader, msg, crypto.Hash(0))
		require.NoError(t, err)
		require.True(t, ed25519.Verify(pub, msg, sig))
	})
}

func TestDecrypt(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a")})
	ctx := context.Background()

	t.Run("native", func(t *testing.T) {
		cl, _ := openCluster(t, topo, "")
		k, err := cl.Key(ctx, "payments", "rsa-key")
		require.NoError(t, err)
		pub := k.Public().(*rsa.PublicKey)
		msg := []byte("a 32-byte session key..........")

		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
		require.NoError(t, err)
		_ = ct
		ct1, err := rsa.EncryptOAEP(crypto.SHA1.New(), rand.Reader, pub, msg, nil)
		require.NoError(t, err)
		pt, err := k.Decrypt(rand.Reader, ct1, &rsa.OAEPOptions{Hash: crypto.SHA1})
		require.NoError(t, err)
		require.Equal(t, msg, pt)

		// SoftHSM 2.6.1 does OAEP with SHA-1 only: SHA-256 is refused by name, as a caller error.
		_, err = k.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256})
		require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
		require.Contains(t, err.Error(), "CKM_RSA_PKCS_OAEP")

		ct2, err := rsa.EncryptPKCS1v15(rand.Reader, pub, msg)
		require.NoError(t, err)
		pt, err = k.Decrypt(rand.Reader, ct2, nil)
		require.NoError(t, err)
		require.Equal(t, msg, pt)

		// Tampered ciphertext: rsa.ErrDecryption, for OAEP and PKCS#1 v1.5.
		bad := bytes.Clone(ct1)
		bad[5] ^= 0x40
		_, err = k.Decrypt(rand.Reader, bad, &rsa.OAEPOptions{Hash: crypto.SHA1})
		require.ErrorIs(t, err, rsa.ErrDecryption)
		bad = bytes.Clone(ct2)
		bad[5] ^= 0x40
		_, err = k.Decrypt(rand.Reader, bad, nil)
		require.ErrorIs(t, err, rsa.ErrDecryption)
		// With SessionKeyLen a bad padding yields random bytes of that length, as crypto/rsa does.
		got, err := k.Decrypt(rand.Reader, bad, &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 32})
		require.NoError(t, err)
		require.Len(t, got, 32)
		require.NotEqual(t, msg, got)
		// DecryptContext applies the same rule, and reports the device that refused.
		var out pkcs11ha.Outcome
		octx := pkcs11ha.WithOutcome(ctx, &out)
		got, err = k.DecryptContext(octx, bad, &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 32})
		require.NoError(t, err)
		require.Len(t, got, 32)
		require.NotEqual(t, msg, got)
		require.Equal(t, "dev-a", out.Device, "the device that refused")
		require.Positive(t, out.Attempts)
		_, err = k.DecryptContext(octx, bad, nil)
		require.ErrorIs(t, err, rsa.ErrDecryption)
		require.Equal(t, "dev-a", out.Device, "the device that refused")
		got, err = k.DecryptContext(octx, ct2, &rsa.PKCS1v15DecryptOptions{SessionKeyLen: len(msg)})
		require.NoError(t, err)
		require.Equal(t, msg, got, "a good ciphertext of the right length decrypts as usual")
		require.Equal(t, "dev-a", out.Device)
		require.Positive(t, out.Attempts) // more than one only if this process stalled past a deadline
		_, err = k.DecryptContext(octx, ct1[:100], nil)
		require.Error(t, err)
		require.Zero(t, out, "refused before any attempt: nothing to report, the last call's report is gone")
		// Wrong length.
		_, err = k.Decrypt(rand.Reader, ct1[:100], &rsa.OAEPOptions{Hash: crypto.SHA1})
		var ie *pkcs11ha.InputError
		require.ErrorAs(t, err, &ie)
	})

	t.Run("fallback", func(t *testing.T) {
		cl, _ := openCluster(t, topo, "oaep_fallback: true")
		k, err := cl.Key(ctx, "payments", "rsa-key")
		require.NoError(t, err)
		pub := k.Public().(*rsa.PublicKey)
		msg := []byte("secret")
		for _, tc := range []struct {
			h, mgf crypto.Hash
			label  []byte
		}{
			{crypto.SHA256, 0, nil},
			{crypto.SHA384, 0, []byte("label")},
			{crypto.SHA512, 0, nil},
			{crypto.SHA1, 0, []byte("label")},
		} {
			ct, err := rsa.EncryptOAEP(tc.h.New(), rand.Reader, pub, msg, tc.label)
			require.NoError(t, err)
			pt, err := k.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: tc.h, Label: tc.label})
			require.NoError(t, err, "OAEP %v", tc.h)
			require.Equal(t, msg, pt)
			ct[len(ct)-1] ^= 1
			_, err = k.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: tc.h, Label: tc.label})
			require.ErrorIs(t, err, rsa.ErrDecryption)
		}
	})
}

// TestBadInputs: caller mistakes are refused before any HSM call and never retried.
func TestBadInputs(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a")})
	reg := prometheus.NewRegistry()
	cl, _ := openCluster(t, topo, "", pkcs11ha.WithRegisterer(reg))
	ctx := context.Background()

	_, err := cl.Key(ctx, "nope", "rsa-key")
	require.ErrorIs(t, err, pkcs11ha.ErrUnknownPartition)
	_, err = cl.Key(ctx, "payments", "nope")
	require.ErrorIs(t, err, pkcs11ha.ErrUnknownKey)

	rk, err := cl.Key(ctx, "payments", "rsa-key")
	require.NoError(t, err)
	ek, err := cl.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	d32 := digest(crypto.SHA256, "x")
	cases := []struct {
		name string
		call func() error
	}{
		{"rsa wrong digest length", func() error { _, err := rk.Sign(nil, d32[:20], crypto.SHA256); return err }},
		{"ecdsa wrong digest length", func() error { _, err := ek.Sign(nil, d32, crypto.SHA384); return err }},
		{"pss options on ecdsa", func() error { _, err := ek.Sign(nil, d32, &rsa.PSSOptions{Hash: crypto.SHA256}); return err }},
		{"nil options", func() error { _, err := ek.Sign(nil, d32, nil); return err }},
		{"decrypt with ecdsa key", func() error { _, err := ek.Decrypt(nil, make([]byte, 256), nil); return err }},
		{"wrong decrypter options", func() error { _, err := rk.Decrypt(nil, make([]byte, 256), &rsa.PSSOptions{}); return err }},
		{"oaep md5", func() error {
			_, err := rk.Decrypt(nil, make([]byte, 256), &rsa.OAEPOptions{Hash: crypto.MD5})
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var ie *pkcs11ha.InputError
			require.ErrorAs(t, err, &ie)
		})
	}
	// None of them reached a device (the series exist from the start, at zero).
	require.Zero(t, testutil.ToFloat64(counterSum(t, reg, "pkcs11ha_attempts_total")), "no attempt was made for bad input")
}

// TestWrongPIN: a device whose token rejects the PIN gets exactly one C_Login attempt, is excluded for that
// partition, and the other device serves.
func TestWrongPIN(t *testing.T) {
	devs := inProcess("dev-a", "dev-b")
	devs[0].PINOverride = map[string]string{"payments": "99999"}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: devs})
	cl, _ := openCluster(t, topo, "health: {interval: 50ms, down_interval: 50ms}")
	ctx := context.Background()

	k, err := cl.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	for range 20 {
		d := digest(crypto.SHA256, "pin")
		sig, err := k.Sign(nil, d, crypto.SHA256)
		require.NoError(t, err)
		require.True(t, ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d, sig))
	}
	// Probes keep running; give them time to (wrongly) try again.
	time.Sleep(300 * time.Millisecond)
	require.EqualValues(t, 1, loginAttempts(cl, "dev-a", "payments"), "a rejected PIN is never tried twice")
	require.EqualValues(t, 1, loginAttempts(cl, "dev-a", "ledger"))
	st := cl.Status()
	require.Equal(t, "dev-a", st[0].Name)
	require.False(t, st[0].Partitions[0].Open)
	require.Contains(t, st[0].Partitions[0].Error, "CKR_PIN_INCORRECT")
	require.NotContains(t, st[0].Partitions[0].Error, "1234")
	require.NotContains(t, st[0].Partitions[0].Error, "99999")
	require.Equal(t, []string{"dev-b"}, k.Info().Devices)
}

// TestKeyConsistency: a device lacking a key or holding a different one under the same label is excluded
// for that key and reported; it still serves the keys it holds correctly.
func TestKeyConsistency(t *testing.T) {
	devs := inProcess("dev-a", "dev-b", "dev-c")
	devs[1].DifferentKeys = []string{"ec-key"}
	devs[2].MissingKeys = []string{"ec-key"}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: devs})
	cl, _ := openCluster(t, topo, "")
	ctx := context.Background()

	k, err := cl.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	require.True(t, k.Public().(*ecdsa.PublicKey).Equal(topo.Keys["ec-key"].Public()))
	info := k.Info()
	require.Equal(t, []string{"dev-a"}, info.Devices)
	require.Contains(t, info.Excluded["dev-b"], "different public key")
	require.Contains(t, info.Excluded["dev-c"], "missing")
	var out pkcs11ha.Outcome
	octx := pkcs11ha.WithOutcome(ctx, &out)
	for range 50 {
		d := digest(crypto.SHA256, "consistency")
		sig, err := k.SignContext(octx, d, crypto.SHA256)
		require.NoError(t, err)
		require.Equal(t, "dev-a", out.Device)
		require.True(t, ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d, sig))
	}
	st := cl.Status()
	require.Contains(t, st[1].ExcludedKeys["payments/ec-key"], "different")
	require.Equal(t, "degraded", st[1].State)
	rk, err := cl.Key(ctx, "payments", "rsa-key")
	require.NoError(t, err)
	require.Len(t, rk.Info().Devices, 3, "the other keys are still served by every device")
}

// TestIndependentVerification: the public key is read from the token by another PKCS#11 client (pkcs11-tool)
// and openssl verifies our signatures against it.
func TestIndependentVerification(t *testing.T) {
	for _, tool := range []string{"pkcs11-tool", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make deps installs opensc and openssl): %v", tool, err)
		}
	}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a")})
	cl, _ := openCluster(t, topo, "")
	dev := topo.Devices[0]
	dir := t.TempDir()
	for _, tc := range []struct {
		label string
		opts  crypto.SignerOpts
		args  []string
	}{
		{"rsa-key", crypto.SHA256, nil},
		{"rsa-key", &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, []string{"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"}},
		{"ec-key", crypto.SHA256, nil},
		{"ed-key", crypto.Hash(0), nil},
	} {
		t.Run(tc.label, func(t *testing.T) {
			k, err := cl.Key(context.Background(), "payments", tc.label)
			require.NoError(t, err)
			msg := []byte("verified by openssl with a key read by pkcs11-tool")
			msgPath := filepath.Join(dir, "msg")
			require.NoError(t, os.WriteFile(msgPath, msg, 0o600))
			h := tc.opts.HashFunc()
			d := msg // Ed25519 signs the message itself
			if h == crypto.SHA256 {
				s := sha256.Sum256(msg)
				d = s[:]
			}
			sig, err := k.Sign(nil, d, tc.opts)
			require.NoError(t, err)
			sigPath := filepath.Join(dir, "sig")
			require.NoError(t, os.WriteFile(sigPath, sig, 0o600))

			var pub any = topo.Keys[tc.label].Public()
			if h != 0 {
				// pkcs11-tool (OpenSC) cannot decode SoftHSM's raw Ed25519 EC_POINT; for the others the public
				// key comes from the token through this independent client.
				derPath := filepath.Join(dir, tc.label+".der")
				cmd := exec.Command("pkcs11-tool", "--module", dev.ModulePath, "--token-label", "payments",
					"--read-object", "--type", "pubkey", "--label", tc.label, "--output-file", derPath)
				cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+dev.ConfPath)
				out, err := cmd.CombinedOutput()
				require.NoError(t, err, "pkcs11-tool: %s", out)
				der, err := os.ReadFile(derPath)
				require.NoError(t, err)
				pub, err = x509.ParsePKIXPublicKey(der)
				if err != nil {
					// Older pkcs11-tool writes RSA keys as PKCS#1.
					pub, err = x509.ParsePKCS1PublicKey(der)
				}
				require.NoError(t, err)
			}
			pubDER, err := x509.MarshalPKIXPublicKey(pub)
			require.NoError(t, err)
			pemPath := filepath.Join(dir, "pub.pem")
			require.NoError(t, os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600))

			var args []string
			if h == 0 {
				args = []string{"pkeyutl", "-verify", "-pubin", "-inkey", pemPath, "-rawin", "-in", msgPath, "-sigfile", sigPath}
			} else {
				args = append([]string{"dgst", "-sha256", "-verify", pemPath, "-signature", sigPath}, tc.args...)
				args = append(args, msgPath)
			}
			out, err := exec.Command("openssl", args...).CombinedOutput()
			require.NoError(t, err, "openssl: %s", out)
			require.Contains(t, string(out), "Verified")
		})
	}
}

// TestKillRestart: a device whose p11-kit server is killed and started again serves again after re-init,
// without restarting this process.
func TestKillRestart(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
	cl, _ := openCluster(t, topo, "health: {interval: 200ms, down_interval: 100ms}\nbreaker: {open_base: 200ms}")
	ctx := context.Background()
	k, err := cl.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	pub := k.Public().(*ecdsa.PublicKey)
	sign := func() error {
		d := digest(crypto.SHA256, "kill")
		sig, err := k.Sign(nil, d, crypto.SHA256)
		if err == nil && !ecdsa.VerifyASN1(pub, d, sig) {
			return errors.New("invalid signature")
		}
		return err
	}
	require.NoError(t, sign())

	dev := topo.Device("eastus-1")
	require.NoError(t, dev.Kill())
	err = sign()
	require.Error(t, err, "the only device is dead")
	require.ErrorIs(t, err, pkcs11ha.ErrNoDevice)

	restartCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, dev.Restart(restartCtx))
	start := time.Now()
	require.Eventually(t, func() bool { return sign() == nil }, 15*time.Second, 50*time.Millisecond,
		"device back after restart; status: %+v", cl.Status())
	t.Logf("device served again %v after the restart", time.Since(start))
	st := cl.Status()
	require.GreaterOrEqual(t, st[0].Reinits, int64(1))
}

// TestSharedModuleInstance: two devices on one module instance, told apart by token serial, as the
// appliances of one Luna client are (each partition a slot of libCryptoki2_64.so). Both serve the key.
func TestSharedModuleInstance(t *testing.T) {
	parts := softhsmtest.DefaultPartitions()
	parts[1].PIN = parts[0].PIN // the second token stands for the same partition on another appliance
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("hsm"), Partitions: parts})
	dev := topo.Devices[0]
	env := fmt.Sprintf("{SOFTHSM2_CONF: %q}", dev.ModuleEnv["SOFTHSM2_CONF"])
	cfgYAML := fmt.Sprintf(`local_region: eastus
devices:
  - {name: appliance-1, region: eastus, module: %q, module_env: %s, token_serials: {payments: %q}}
  - {name: appliance-2, region: eastus, module: %q, module_env: %s, token_serials: {payments: %q}}
partitions:
  - {name: payments, token_label: payments, pin: %q}
`, dev.ModulePath, env, dev.Serials["payments"], dev.ModulePath, env, dev.Serials["ledger"], parts[0].PIN)
	path := filepath.Join(t.TempDir(), "shared.yaml")
	require.NoError(t, os.WriteFile(path, []byte(cfgYAML), 0o600))
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	cl, err := pkcs11ha.Open(context.Background(), cfg)
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl)

	k, err := cl.Key(context.Background(), "payments", "ec-key")
	require.NoError(t, err)
	require.Equal(t, []string{"appliance-1", "appliance-2"}, k.Info().Devices)
	// Which appliance serves a call follows the latency estimates (a probe slowed by a busy host raises one
	// for seconds), so calls run in rounds of 4 x 50 until both have served, each signature verified.
	served := map[string]int{}
	pub := k.Public().(*ecdsa.PublicKey)
	for start := time.Now(); len(served) < 2; {
		require.Less(t, time.Since(start), 30*time.Second, "both appliances serve: %v", served)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out pkcs11ha.Outcome
				octx := pkcs11ha.WithOutcome(context.Background(), &out)
				for range 50 {
					d := digest(crypto.SHA256, "shared")
					sig, err := k.SignContext(octx, d, crypto.SHA256)
					dev := out.Device
					if !assert.NoError(t, err) || !assert.True(t, ecdsa.VerifyASN1(pub, d, sig)) {
						return
					}
					mu.Lock()
					served[dev]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		require.False(t, t.Failed())
	}
	t.Logf("served: %v", served)
}

// TestClusterOwnsItsConfig: Open runs on its own copy: changing the caller's config afterwards changes
// nothing, and Config returns a fresh copy each time, with the policy in effect.
func TestClusterOwnsItsConfig(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a")})
	cl, cfg := openCluster(t, topo, "spill_wait: -1ms")
	require.Zero(t, cfg.Policy.OperationTimeout, "Open wrote no default into the caller's config")

	cfg.Policy.OperationTimeout = pkcs11ha.Duration(time.Hour)
	cfg.Devices[0].Name = "renamed"
	got := cl.Config()
	require.Equal(t, 2*time.Second, got.Policy.OperationTimeout.D(), "the default in effect, not the caller's later change")
	require.Equal(t, -time.Millisecond, got.Policy.SpillWait.D(), "negative: never wait")
	require.Equal(t, "dev-a", got.Devices[0].Name)

	got.Devices[0].ModuleEnv["X"] = "y"
	got.Policy.CloseTimeout = 0
	again := cl.Config()
	require.NotContains(t, again.Devices[0].ModuleEnv, "X", "each Config is a copy")
	require.Equal(t, 2*time.Second, again.Policy.CloseTimeout.D())
	require.Equal(t, "dev-a", cl.Status()[0].Name)
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
