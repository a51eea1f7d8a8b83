package pkcs11ha_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// secretKeys are the harness's default secret keys plus a generic secret (HMAC with any hash) and an
// HMAC-SHA-384 key.
func secretKeys() []softhsmtest.SecretKeySpec {
	return append(softhsmtest.DefaultSecretKeys(),
		softhsmtest.SecretKeySpec{Label: "generic-key", ID: []byte{0x12}, Kind: softhsmtest.KindGeneric},
		softhsmtest.SecretKeySpec{Label: "hmac384-key", ID: []byte{0x13}, Kind: softhsmtest.KindHMACSHA384})
}

// goGCM is AES-GCM in the Go standard library with the key's real value.
func goGCM(t *testing.T, key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	require.NoError(t, err)
	g, err := cipher.NewGCM(b)
	require.NoError(t, err)
	return g
}

func goMAC(h func() hash.Hash, key, data []byte) []byte {
	m := hmac.New(h, key)
	m.Write(data)
	return m.Sum(nil)
}

// checkSecretOps runs Seal/Open/MAC/VerifyMAC on the cluster and checks every output with the Go standard
// library and the keys' real values; it returns the devices that served.
func checkSecretOps(t *testing.T, cl *pkcs11ha.Cluster, topo *softhsmtest.Topology) map[string]int {
	t.Helper()
	ctx := context.Background()
	var out pkcs11ha.Outcome
	octx := pkcs11ha.WithOutcome(ctx, &out)
	served := map[string]int{}
	aesKey, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	require.Equal(t, pkcs11ha.AlgAES256, aesKey.Algorithm())
	g := goGCM(t, topo.SecretKeys["aes-key"])
	for _, n := range []int{0, 1, 16, 32, 100} {
		pt := make([]byte, n)
		_, _ = rand.Read(pt)
		aad := []byte("context: secret/db-password")
		sealed, err := aesKey.Seal(octx, pt, aad)
		require.NoError(t, err)
		require.NotEmpty(t, out.Device)
		served[out.Device]++
		require.Len(t, sealed, n+pkcs11ha.SealOverhead)
		got, err := g.Open(nil, sealed[:12], sealed[12:], aad)
		require.NoError(t, err, "Go's AES-GCM opens what the HSM sealed")
		require.True(t, bytes.Equal(pt, got))

		goSealed := g.Seal(append([]byte(nil), sealed[:12]...), sealed[:12], pt, aad)
		require.Equal(t, sealed, goSealed, "same nonce, same output as Go's AES-GCM")
		got, err = aesKey.Open(octx, goSealed, aad)
		require.NoError(t, err)
		require.True(t, bytes.Equal(pt, got))
		served[out.Device]++
	}
	// Two Seals of the same plaintext use different nonces.
	a, err := aesKey.Seal(ctx, []byte("same"), nil)
	require.NoError(t, err)
	b, err := aesKey.Seal(ctx, []byte("same"), nil)
	require.NoError(t, err)
	require.NotEqual(t, a[:12], b[:12])

	hk, err := cl.SecretKey(ctx, "payments", "hmac-key")
	require.NoError(t, err)
	require.Equal(t, crypto.SHA256, hk.Hash())
	data := []byte("a token to authenticate")
	mac, err := hk.MAC(octx, data)
	require.NoError(t, err)
	served[out.Device]++
	require.Equal(t, goMAC(sha256.New, topo.SecretKeys["hmac-key"], data), mac)
	require.NoError(t, hk.VerifyMAC(octx, data, mac))
	served[out.Device]++

	h384, err := cl.SecretKey(ctx, "ledger", "hmac384-key")
	require.NoError(t, err)
	mac, err = h384.MAC(ctx, data)
	require.NoError(t, err)
	require.Equal(t, goMAC(sha512.New384, topo.SecretKeys["hmac384-key"], data), mac)
	_, err = h384.WithHash(crypto.SHA256)
	require.ErrorAs(t, err, new(*pkcs11ha.InputError), "a CKK_SHA384_HMAC key MACs with SHA-384 only")

	gk, err := cl.SecretKey(ctx, "payments", "generic-key")
	require.NoError(t, err)
	for _, tc := range []struct {
		h  crypto.Hash
		fn func() hash.Hash
	}{{crypto.SHA256, sha256.New}, {crypto.SHA384, sha512.New384}, {crypto.SHA512, sha512.New}} {
		k, err := gk.WithHash(tc.h)
		require.NoError(t, err)
		mac, err := k.MAC(ctx, data)
		require.NoError(t, err)
		require.Equal(t, goMAC(tc.fn, topo.SecretKeys["generic-key"], data), mac, "%v", tc.h)
		require.NoError(t, k.VerifyMAC(ctx, data, mac))
	}
	// Keys of the wrong kind are refused before any device call.
	_, err = aesKey.MAC(ctx, data)
	require.ErrorAs(t, err, new(*pkcs11ha.InputError))
	_, err = hk.Seal(ctx, data, nil)
	require.ErrorAs(t, err, new(*pkcs11ha.InputError))
	return served
}

// TestSecretKeysNative: AES-GCM with CKM_AES_GCM on in-process SoftHSM devices (no p11-kit RPC), HMAC with
// CKM_SHA*_HMAC; every output checked with the Go standard library.
func TestSecretKeysNative(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a", "dev-b"), SecretKeys: secretKeys()})
	cl, _ := openCluster(t, topo, "") // no gcm_fallback: CKM_AES_GCM itself
	served := checkSecretOps(t, cl, topo)
	require.NotEmpty(t, served)
	keys, err := cl.SecretKeys("payments")
	require.NoError(t, err)
	require.Len(t, keys, 4)
	for _, k := range keys {
		require.Equal(t, []string{"dev-a", "dev-b"}, k.Devices, k.Label)
		require.Len(t, k.CheckValue, 16, "64-bit check value in hex")
	}
	// The AES key's check value is AES(kcvBlock) with the real key: what anyone holding the key computes.
	b, err := aes.NewCipher(topo.SecretKeys["aes-key"])
	require.NoError(t, err)
	blk := make([]byte, 16)
	b.Encrypt(blk, []byte("pkcs11ha KCV v1\x00"))
	require.Equal(t, hex.EncodeToString(blk[:8]), keys[0].CheckValue)
	require.Equal(t, hex.EncodeToString(goMAC(sha256.New, topo.SecretKeys["hmac-key"], []byte("pkcs11ha key check value v1"))[:8]), keys[2].CheckValue)
}

// singleDeviceClusters opens one cluster per device of topo, each configured with that device alone, so
// a test knows which device served.
func singleDeviceClusters(t *testing.T, topo *softhsmtest.Topology, policy string) map[string]*pkcs11ha.Cluster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}))
	out := map[string]*pkcs11ha.Cluster{}
	for _, d := range topo.Devices {
		cfg, err := pkcs11ha.LoadConfig(path)
		require.NoError(t, err)
		for _, dc := range cfg.Devices {
			if dc.Name == d.Name {
				cfg.Devices = []pkcs11ha.DeviceConfig{dc}
			}
		}
		cfg.LocalRegion = d.Region
		applyIsolation(cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cl, err := pkcs11ha.Open(ctx, cfg)
		cancel()
		require.NoError(t, err)
		leakcheck.CloseCluster(t, cl)
		out[d.Name] = cl
	}
	return out
}

// TestSecretKeysEveryDevice: over p11-kit's RPC (which does not carry CKM_AES_GCM in 0.24) with
// policy.gcm_fallback, Seal/Open/MAC round trips served by each of the four devices, and what one device
// sealed opened by another.
func TestSecretKeysEveryDevice(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: softhsmtest.DefaultTopology(2 * time.Millisecond), SecretKeys: secretKeys()})
	ctx := context.Background()

	// Without the fallback, p11-kit 0.24's client refuses CKM_AES_GCM: a clear "not supported", at once.
	cl, _ := openCluster(t, topo, "")
	k, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	_, err = k.Seal(ctx, []byte("x"), nil)
	if err != nil { // a p11-kit client that carries CKM_AES_GCM (0.25+) seals
		require.ErrorIs(t, err, pkcs11ha.ErrUnsupported)
	}

	clusters := singleDeviceClusters(t, topo, "gcm_fallback: true\nattempt_timeout: {local: 1s, dr: 2s}")
	sealed := map[string][]byte{}
	for name, cl := range clusters {
		served := checkSecretOps(t, cl, topo)
		require.Equal(t, []string{name}, keysOf(served), "device %s served its cluster's calls", name)
		k, err := cl.SecretKey(ctx, "ledger", "aes-key")
		require.NoError(t, err)
		sealed[name], err = k.Seal(ctx, []byte("sealed on "+name), []byte(name))
		require.NoError(t, err)
	}
	for from, s := range sealed {
		for to, cl := range clusters {
			k, err := cl.SecretKey(ctx, "ledger", "aes-key")
			require.NoError(t, err)
			var out pkcs11ha.Outcome
			pt, err := k.Open(pkcs11ha.WithOutcome(ctx, &out), s, []byte(from))
			require.NoError(t, err, "sealed on %s, opened on %s", from, to)
			require.Equal(t, "sealed on "+from, string(pt))
			require.Equal(t, to, out.Device)
		}
	}
}

func keysOf(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestSecretKeyConsistency: a device holding another key under the same label (its check value differs)
// and a device missing the key are excluded for it, and reported.
func TestSecretKeyConsistency(t *testing.T) {
	devs := inProcess("dev-a", "dev-b", "dev-c")
	devs[1].DifferentKeys = []string{"aes-key"}
	devs[2].MissingKeys = []string{"hmac-key"}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: devs, SecretKeys: softhsmtest.DefaultSecretKeys()})
	cl, _ := openCluster(t, topo, "")
	ctx := context.Background()

	k, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	info := k.Info()
	require.Equal(t, []string{"dev-a", "dev-c"}, info.Devices)
	require.Contains(t, info.Excluded["dev-b"], "different key under the same label")
	hk, err := cl.SecretKey(ctx, "payments", "hmac-key")
	require.NoError(t, err)
	require.Equal(t, []string{"dev-a", "dev-b"}, hk.Info().Devices)
	require.Contains(t, hk.Info().Excluded["dev-c"], "missing")

	var out pkcs11ha.Outcome
	octx := pkcs11ha.WithOutcome(ctx, &out)
	g := goGCM(t, topo.SecretKeys["aes-key"])
	for range 30 {
		s, err := k.Seal(octx, []byte("consistent"), nil)
		require.NoError(t, err)
		require.NotEqual(t, "dev-b", out.Device)
		_, err = g.Open(nil, s[:12], s[12:], nil)
		require.NoError(t, err, "sealed with the reference key")
	}
	st := cl.Status()
	require.Contains(t, st[1].ExcludedKeys["payments/aes-key"], "different key")
	require.Contains(t, st[2].ExcludedKeys["payments/hmac-key"], "missing")
}

// TestSecretKeyAuthFailures: wrong additional data, a tampered, truncated or foreign ciphertext and a
// wrong MAC are the caller's: ErrAuthentication / ErrMACMismatch at once, one attempt, never counted on a
// breaker, and the device keeps serving.
func TestSecretKeyAuthFailures(t *testing.T) {
	for _, v := range []struct {
		name, policy string
		devices      []softhsmtest.DeviceSpec
	}{
		{"native", "", inProcess("dev-a", "dev-b")},                            // CKM_AES_GCM on the token
		{"fallback", "gcm_fallback: true", softhsmtest.DefaultTopology(0)[:2]}, // p11-kit 0.24: GCM from AES-ECB
	} {
		t.Run(v.name, func(t *testing.T) {
			topo := harnesstest.Start(t, softhsmtest.Options{Devices: v.devices, SecretKeys: softhsmtest.DefaultSecretKeys()})
			cl, _ := openCluster(t, topo, v.policy)
			ctx := context.Background()
			k, err := cl.SecretKey(ctx, "payments", "aes-key")
			require.NoError(t, err)
			sealed, err := k.Seal(ctx, []byte("the data key"), []byte("aad"))
			require.NoError(t, err)
			tampered := bytes.Clone(sealed)
			tampered[15] ^= 1
			badTag := bytes.Clone(sealed)
			badTag[len(badTag)-1] ^= 1
			badNonce := bytes.Clone(sealed)
			badNonce[0] ^= 1
			cases := []struct {
				name        string
				sealed, aad []byte
				device      bool // a device decided (else refused before any call)
			}{
				{"wrong aad", sealed, []byte("aae"), true},
				{"no aad", sealed, nil, true},
				{"tampered ciphertext", tampered, []byte("aad"), true},
				{"tampered tag", badTag, []byte("aad"), true},
				{"tampered nonce", badNonce, []byte("aad"), true},
				{"truncated by one", sealed[:len(sealed)-1], []byte("aad"), true},
				{"truncated to nonce and tag", sealed[:28], []byte("aad"), true},
				{"shorter than nonce and tag", sealed[:27], []byte("aad"), false},
				{"empty", nil, []byte("aad"), false},
			}
			var out pkcs11ha.Outcome
			for range 3 { // more refusals than breaker.consecutive_failures would allow failures
				for _, tc := range cases {
					_, err := k.Open(pkcs11ha.WithOutcome(ctx, &out), tc.sealed, tc.aad)
					require.ErrorIs(t, err, pkcs11ha.ErrAuthentication, tc.name)
					var ae *pkcs11ha.AuthError
					require.ErrorAs(t, err, &ae)
					if tc.device {
						require.Equal(t, 1, out.Attempts, "%s: one attempt, never retried elsewhere", tc.name)
						require.NotEmpty(t, ae.Device, tc.name)
					} else {
						require.Zero(t, out.Attempts, tc.name)
					}
				}
			}
			hk, err := cl.SecretKey(ctx, "payments", "hmac-key")
			require.NoError(t, err)
			mac, err := hk.MAC(ctx, []byte("data"))
			require.NoError(t, err)
			require.ErrorIs(t, hk.VerifyMAC(ctx, []byte("datb"), mac), pkcs11ha.ErrMACMismatch)
			require.ErrorIs(t, hk.VerifyMAC(ctx, []byte("data"), mac[:31]), pkcs11ha.ErrMACMismatch)
			require.False(t, errors.Is(hk.VerifyMAC(ctx, []byte("data"), mac), pkcs11ha.ErrMACMismatch))

			for _, st := range cl.Status() {
				require.Equal(t, "closed", st.Breaker, "%s: refusals are not device failures", st.Name)
				require.Equal(t, "up", st.State, st.Name)
			}
			pt, err := k.Open(ctx, sealed, []byte("aad"))
			require.NoError(t, err)
			require.Equal(t, "the data key", string(pt))
		})
	}
}

// TestHASecretKeysKillPause: Seal, Open and MAC under load while eastus-1 is killed and eastus-2 paused (4
// devices over p11-kit, policy.gcm_fallback): no call fails, DR serves, and every output checks with the Go
// standard library.
func TestHASecretKeysKillPause(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{SecretKeys: softhsmtest.DefaultSecretKeys()})
	cl, _ := openCluster(t, topo, haPolicy+"\ngcm_fallback: true")
	ctx := context.Background()
	ak, err := cl.SecretKey(ctx, "payments", "aes-key")
	require.NoError(t, err)
	hk, err := cl.SecretKey(ctx, "payments", "hmac-key")
	require.NoError(t, err)
	g := goGCM(t, topo.SecretKeys["aes-key"])
	hmacKey := topo.SecretKeys["hmac-key"]
	op := func(ctx context.Context, w, i int) error {
		msg := fmt.Appendf(nil, "w%d-%d", w, i)
		switch i % 3 {
		case 0:
			s, err := ak.Seal(ctx, msg, []byte("aad"))
			if err != nil {
				return err
			}
			if _, err := g.Open(nil, s[:12], s[12:], []byte("aad")); err != nil {
				return fmt.Errorf("Go cannot open what was sealed: %w", err)
			}
		case 1:
			nonce := make([]byte, 12)
			_, _ = rand.Read(nonce)
			pt, err := ak.Open(ctx, g.Seal(nonce, nonce, msg, nil), nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(pt, msg) {
				return errors.New("Open returned another plaintext")
			}
		default:
			mac, err := hk.MAC(ctx, msg)
			if err != nil {
				return err
			}
			if !hmac.Equal(mac, goMAC(sha256.New, hmacKey, msg)) {
				return errors.New("MAC differs from Go's HMAC")
			}
		}
		return nil
	}
	stop := make(chan struct{})
	done := make(chan *loadResult)
	go func() { done <- runOps(8, 2*time.Second, stop, op) }()
	time.Sleep(time.Second)
	require.NoError(t, topo.Device("eastus-1").Kill())
	require.NoError(t, topo.Device("eastus-2").Pause())
	time.Sleep(3 * time.Second)
	close(stop)
	res := <-done
	require.NoError(t, topo.Device("eastus-2").Resume())
	requireNoFailures(t, "eastus-1 killed, eastus-2 paused", res)
	require.Positive(t, res.share("westus"), "DR served while the local pair was out")
}
