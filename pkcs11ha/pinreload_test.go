package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"log/slog"
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

// TestWrongPINFixed: both devices' payments tokens have PIN 99999 while the configuration says 1234 (the
// harness's PINOverride). Each device tries 1234 once at Open, then never again, whatever the probes and
// reloads that bring it back; a second wrong PIN from the operator is tried once too; the right one brings
// the partition back on both devices without a restart. For each PIN source: a pin_file whose content
// changes (noticed by the probes, no call needed), pin_env with Cluster.ReloadPINs(nil), and an inline pin
// with ReloadPINs of the re-read config (what the sidecar does on SIGHUP).
func TestWrongPINFixed(t *testing.T) {
	for _, style := range []string{softhsmtest.PINFile, softhsmtest.PINEnv, softhsmtest.PINInline} {
		t.Run(style, func(t *testing.T) {
			devs := inProcess("dev-a", "dev-b")
			for i := range devs {
				devs[i].PINOverride = map[string]string{"payments": "99999"}
			}
			topo := harnesstest.Start(t, softhsmtest.Options{Devices: devs})
			path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
			write := func() {
				require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PINStyle: style,
					PolicyYAML: "health: {interval: 50ms, down_interval: 50ms}"}))
			}
			env := softhsmtest.PINEnvVar("payments")
			if style == softhsmtest.PINEnv {
				for k, v := range topo.PINEnv() {
					t.Setenv(k, v)
				}
			}
			write()
			cfg, err := pkcs11ha.LoadConfig(path)
			require.NoError(t, err)
			var logBuf softhsmtest.LogBuffer
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cl, err := pkcs11ha.Open(ctx, cfg, pkcs11ha.WithLogger(slog.New(slog.NewTextHandler(&logBuf, nil))))
			require.NoError(t, err, "ledger opens: the cluster serves")
			leakcheck.CloseCluster(t, cl)

			attempts := func() (int64, int64) {
				return loginAttempts(cl, "dev-a", "payments"), loginAttempts(cl, "dev-b", "payments")
			}
			requireAttempts := func(want int64, why string) {
				t.Helper()
				time.Sleep(300 * time.Millisecond) // several probe rounds: none may try again
				a, b := attempts()
				require.Equal(t, want, a, "dev-a: %s", why)
				require.Equal(t, want, b, "dev-b: %s", why)
			}
			// setPIN changes the PIN at its source and, but for pin_file, reloads.
			setPIN := func(pin string) {
				t.Helper()
				switch style {
				case softhsmtest.PINFile:
					tmp := filepath.Join(topo.Dir, "pins", "payments.pin.new")
					require.NoError(t, os.WriteFile(tmp, []byte(pin+"\n"), 0o600))
					require.NoError(t, os.Rename(tmp, filepath.Join(topo.Dir, "pins", "payments.pin")))
					return
				case softhsmtest.PINEnv:
					t.Setenv(env, pin)
					_, err := cl.ReloadPINs(nil)
					require.NoError(t, err)
				case softhsmtest.PINInline:
					b, err := os.ReadFile(path)
					require.NoError(t, err)
					s := string(b)
					for _, old := range []string{`"1234"`, `"55555"`} {
						s = strings.Replace(s, "pin: "+old, `pin: "`+pin+`"`, 1)
					}
					require.NoError(t, os.WriteFile(path, []byte(s), 0o600))
					ncfg, err := pkcs11ha.LoadConfig(path)
					require.NoError(t, err)
					_, err = cl.ReloadPINs(ncfg)
					require.NoError(t, err)
				}
			}

			requireAttempts(1, "one login with the configured PIN, then none")
			_, err = cl.Key(ctx, "payments", "ec-key")
			require.ErrorIs(t, err, pkcs11ha.ErrUnknownKey, "no device opened payments")

			// Reloading the same wrong PIN tries nothing.
			if style != softhsmtest.PINFile {
				n, err := cl.ReloadPINs(nil)
				require.NoError(t, err)
				require.Zero(t, n, "the same PIN is never tried twice")
			}
			requireAttempts(1, "same PIN")

			// Another wrong PIN: tried once, then never again.
			setPIN("55555")
			require.Eventually(t, func() bool { a, b := attempts(); return a == 2 && b == 2 }, 10*time.Second, 10*time.Millisecond)
			requireAttempts(2, "the second wrong PIN was tried once")
			st := cl.Status()
			require.False(t, st[0].Partitions[0].Open)
			require.Contains(t, st[0].Partitions[0].Error, "CKR_PIN_INCORRECT")

			// The right one: the partition comes back on both devices, without a restart.
			setPIN("99999")
			require.Eventually(t, func() bool {
				for _, s := range cl.Status() {
					if !s.Partitions[0].Open {
						return false
					}
				}
				return true
			}, 10*time.Second, 10*time.Millisecond, "payments open again: %+v", cl.Status())
			requireAttempts(3, "the right PIN was tried once")
			k, err := cl.Key(ctx, "payments", "ec-key")
			require.NoError(t, err)
			require.ElementsMatch(t, []string{"dev-a", "dev-b"}, k.Info().Devices)
			for range 10 {
				d := digest(crypto.SHA256, "fixed")
				sig, err := k.Sign(nil, d, crypto.SHA256)
				require.NoError(t, err)
				require.True(t, ecdsa.VerifyASN1(topo.Keys["ec-key"].Public().(*ecdsa.PublicKey), d, sig))
			}

			logs := logBuf.String()
			require.Contains(t, logs, "partition=payments")
			for _, pin := range []string{"1234", "55555", "99999"} {
				require.NotContains(t, logs, pin, "a PIN never appears in a log")
			}
		})
	}
}

// TestReloadPINsErrors: a source that cannot be read is reported with its partition and field, never the
// PIN, and changes nothing.
func TestReloadPINsErrors(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a")})
	for k, v := range topo.PINEnv() {
		t.Setenv(k, v)
	}
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PINStyle: softhsmtest.PINEnv}))
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	cl, err := pkcs11ha.Open(context.Background(), cfg)
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl)

	require.NoError(t, os.Unsetenv(softhsmtest.PINEnvVar("payments")))
	n, err := cl.ReloadPINs(nil)
	require.Zero(t, n)
	var ce *pkcs11ha.ConfigError
	require.True(t, errors.As(err, &ce), "%v", err)
	require.Equal(t, "partitions[payments].pin_env", ce.Field)
	require.NotContains(t, err.Error(), "1234")
}
