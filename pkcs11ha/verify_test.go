package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestVerifyAfterSign: eastus-1 returns corrupted signatures (the relay flips a bit in every C_Sign reply).
// With verification, no bad signature reaches the caller: the first one takes eastus-1 out at once (breaker
// open, down with the reason, a metric and an error log line naming device, partition and key, never the
// signature) and the call is served by eastus-2; once healed, eastus-1 serves again. Without it (off, or an
// ECDSA key under the default "rsa"), the corrupted signature is what the caller gets.
func TestVerifyAfterSign(t *testing.T) {
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	for _, tc := range []struct {
		name, mode, key string
		opts            crypto.SignerOpts
		caught          bool
	}{
		{"rsa: PKCS1 v1.5", "", "rsa-key", crypto.SHA256, true}, // no "#" in a name: it ends up in a SoftHSM path
		{"rsa: PSS", "", "rsa-key", pss, true},
		{"all: ECDSA", "all", "ec-key", crypto.SHA256, true},
		{"rsa: ECDSA passes unchecked", "", "ec-key", crypto.SHA256, false},
		{"off: RSA passes unchecked", "off", "rsa-key", crypto.SHA256, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
				{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
			var logBuf softhsmtest.LogBuffer
			reg := prometheus.NewRegistry()
			// Attempt deadlines no healthy device misses on a loaded host (eastus-2 answers through a 5 ms relay
			// delay each way): which device serves is decided by the fault alone.
			policy := "health: {interval: 200ms, down_interval: 100ms}\nbreaker: {open_base: 3s, open_max: 3s}\nattempt_timeout: {local: 1s}"
			if tc.mode != "" {
				policy += "\nverify_signatures: " + tc.mode
			}
			cl, _ := openCluster(t, topo, policy, pkcs11ha.WithLogger(slog.New(slog.NewTextHandler(&logBuf, nil))), pkcs11ha.WithRegisterer(reg))
			k, err := cl.Key(context.Background(), "payments", tc.key)
			require.NoError(t, err)
			pub := topo.Keys[tc.key].Public()
			sign := func(i int) (string, error) {
				d := digest(crypto.SHA256, fmt.Sprintf("verify-%d", i))
				var out pkcs11ha.Outcome
				ctx, cancel := context.WithTimeout(pkcs11ha.WithOutcome(context.Background(), &out), 2*time.Second)
				defer cancel()
				sig, err := k.SignContext(ctx, d, tc.opts)
				if err != nil {
					return out.Device, err
				}
				return out.Device, verifyWith(pub, d, sig, tc.opts)
			}
			bad := func() float64 {
				return testutil.ToFloat64(counterWith(t, reg, "pkcs11ha_bad_signatures_total", "eastus-1"))
			}

			// Sequential calls go to the device with the lower latency estimate: make that eastus-1, or
			// which device serves would hang on which probe came first. eastus-2's relay adds 5 ms each way
			// and its first probe raises its estimate at once (peak EWMA).
			require.NoError(t, topo.Device("eastus-2").SetDelay(5*time.Millisecond, 5*time.Millisecond))
			require.Eventually(t, func() bool {
				st := cl.Status()
				return st[1].EWMA > st[0].EWMA+2*time.Millisecond
			}, 5*time.Second, 10*time.Millisecond, "eastus-2's estimate rises above eastus-1's")
			require.NoError(t, topo.Device("eastus-1").CorruptSignatures(true))
			if !tc.caught {
				for i := range 200 {
					if dev, err := sign(i); dev == "eastus-1" {
						require.Error(t, err, "the corrupted signature reached the caller: this is what verification prevents")
						require.Zero(t, bad())
						return
					}
				}
				t.Fatal("eastus-1 served no call")
			}
			i := 0
			for ; bad() == 0; i++ {
				require.Less(t, i, 200, "eastus-1 was never tried")
				dev, err := sign(i)
				require.NoError(t, err, "call %d: no bad signature reaches the caller", i)
				require.Equal(t, "eastus-2", dev, "a signature from eastus-1 would be a corrupted one")
			}
			// Taken out at once: before the call that met the bad signature returned.
			st := cl.Status()[0]
			require.Equal(t, "down", st.State)
			require.Contains(t, st.Reason, "does not verify")
			require.Equal(t, "open", st.Breaker)
			for j := range 20 {
				dev, err := sign(i + j)
				require.NoError(t, err)
				require.Equal(t, "eastus-2", dev)
			}
			require.Equal(t, 1.0, bad(), "excluded within one call")
			logs := logBuf.String()
			require.Contains(t, logs, "level=ERROR")
			require.Contains(t, logs, "device=eastus-1 partition=payments key="+tc.key)
			require.NotContains(t, strings.ToLower(logs), "sig=")

			require.NoError(t, topo.Device("eastus-1").CorruptSignatures(false))
			require.Eventually(t, func() bool {
				i++
				dev, err := sign(i)
				require.NoError(t, err)
				return dev == "eastus-1"
			}, 20*time.Second, 20*time.Millisecond, "eastus-1 serves again once healed: %+v", cl.Status())
		})
	}
}

func verifyWith(pub crypto.PublicKey, d, sig []byte, opts crypto.SignerOpts) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if p, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(k, opts.HashFunc(), d, sig, p)
		}
		return rsa.VerifyPKCS1v15(k, opts.HashFunc(), d, sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, d, sig) {
			return fmt.Errorf("ECDSA signature %s does not verify", base64.StdEncoding.EncodeToString(sig))
		}
		return nil
	}
	return fmt.Errorf("%T", pub)
}
