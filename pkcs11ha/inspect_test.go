package pkcs11ha_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// inspectPIN is every partition's PIN in the Inspect tests: distinctive, so that finding it in a report
// means it leaked.
const inspectPIN = "pin-Inspect-7391"

// inspectTopology starts devs with distinctive PINs and loads the config written for them.
func inspectTopology(t *testing.T, devs []softhsmtest.DeviceSpec, policy string) (*softhsmtest.Topology, *pkcs11ha.Config) {
	t.Helper()
	parts := softhsmtest.DefaultPartitions()
	for i := range parts {
		parts[i].PIN = inspectPIN
	}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: devs, Partitions: parts})
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}))
	cfg, err := pkcs11ha.LoadConfig(path)
	require.NoError(t, err)
	return topo, cfg
}

func fingerprintOf(t *testing.T, topo *softhsmtest.Topology, device, label string) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(topo.Device(device).Keys[label].Public())
	require.NoError(t, err)
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func deviceReport(t *testing.T, rep *inspection.Report, name string) inspection.DeviceReport {
	t.Helper()
	for _, d := range rep.Devices {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no device %s in the report", name)
	return inspection.DeviceReport{}
}

func keyReport(t *testing.T, rep *inspection.Report, partition, label string) inspection.KeyReport {
	t.Helper()
	for _, p := range rep.Partitions {
		for _, k := range p.Keys {
			if p.Name == partition && k.Label == label {
				return k
			}
		}
	}
	t.Fatalf("no key %s/%s in the report", partition, label)
	return inspection.KeyReport{}
}

func keyStatus(k inspection.KeyReport) map[string]string {
	m := map[string]string{}
	for _, d := range k.Devices {
		m[d.Device] = d.Status
	}
	return m
}

// TestInspect runs Inspect on real devices (p11-kit servers behind relays, two local and two DR) with one
// fault each and checks what the report says about every device, partition and key.
func TestInspect(t *testing.T) {
	tests := []struct {
		name  string
		opts  inspection.Options
		edit  func(devs []softhsmtest.DeviceSpec)
		fault func(t *testing.T, topo *softhsmtest.Topology)
		check func(t *testing.T, topo *softhsmtest.Topology, rep *inspection.Report)
	}{
		{name: "healthy", check: func(t *testing.T, topo *softhsmtest.Topology, rep *inspection.Report) {
			for _, d := range rep.Devices {
				assert.True(t, d.Reachable, d.Name)
				assert.Empty(t, d.Error)
				require.NotNil(t, d.Latency, d.Name)
				assert.Equal(t, 5, d.Latency.Samples)
				assert.LessOrEqual(t, d.Latency.Min, d.Latency.Median)
				require.NotNil(t, d.Library)
				for _, p := range d.Partitions {
					assert.True(t, p.LoggedIn, "%s/%s", d.Name, p.Name)
					assert.EqualValues(t, 1, p.LoginAttempts)
					require.NotNil(t, p.Token)
					assert.Equal(t, topo.Device(d.Name).Serials[p.Name], p.Token.Serial)
					assert.Equal(t, p.Name, p.Token.Label)
					assert.Equal(t, inspection.SessionsNoLimit, p.Token.MaxSessions.Kind, "SoftHSM has no session limit")
					assert.Equal(t, 17, p.SessionsPerClient, "pool of 16 and the login session")
					assert.Equal(t, 4, p.Keys)
				}
			}
			assert.Equal(t, 0, deviceReport(t, rep, "eastus-1").Tier)
			assert.Equal(t, 1, deviceReport(t, rep, "westus-1").Tier)
			assert.Greater(t, deviceReport(t, rep, "westus-1").Latency.Min, 15*time.Millisecond,
				"a DR call crosses the relay's 10 ms one-way delay twice")
			k := keyReport(t, rep, "payments", "ec-key")
			assert.True(t, k.Consistent)
			assert.Equal(t, "EC", k.KeyType)
			assert.Equal(t, 256, k.Bits)
			assert.Equal(t, fingerprintOf(t, topo, "eastus-1", "ec-key"), k.Fingerprint)
			r := keyReport(t, rep, "ledger", "rsa-key")
			assert.Equal(t, "RSA", r.KeyType)
			assert.Equal(t, 2048, r.Bits)
			assert.Equal(t, map[string]string{"eastus-1": "match", "eastus-2": "match", "westus-1": "match", "westus-2": "match"}, keyStatus(r))
		}},
		{name: "killed device", opts: inspection.Options{LatencySamples: 3}, fault: func(t *testing.T, topo *softhsmtest.Topology) {
			require.NoError(t, topo.Device("eastus-2").Kill())
		}, check: func(t *testing.T, topo *softhsmtest.Topology, rep *inspection.Report) {
			d := deviceReport(t, rep, "eastus-2")
			assert.False(t, d.Reachable)
			assert.Equal(t, "device_down", d.ErrorClass)
			assert.NotEmpty(t, d.Error)
			assert.Equal(t, "unchecked", keyStatus(keyReport(t, rep, "payments", "ec-key"))["eastus-2"])
			assert.True(t, keyReport(t, rep, "payments", "ec-key").Consistent)
			assert.True(t, deviceReport(t, rep, "eastus-1").Reachable)
			assert.Equal(t, 3, deviceReport(t, rep, "eastus-1").Latency.Samples)
		}},
		{name: "different and missing keys", edit: func(devs []softhsmtest.DeviceSpec) {
			devs[0].DifferentKeys = []string{"ec-key"}
			devs[3].MissingKeys = []string{"rsa-key"}
		}, check: func(t *testing.T, topo *softhsmtest.Topology, rep *inspection.Report) {
			k := keyReport(t, rep, "payments", "ec-key")
			assert.False(t, k.Consistent)
			assert.Equal(t, map[string]string{"eastus-1": "different", "eastus-2": "match", "westus-1": "match", "westus-2": "match"}, keyStatus(k))
			assert.Equal(t, fingerprintOf(t, topo, "eastus-2", "ec-key"), k.Fingerprint, "the majority, not the first device, is the reference")
			assert.Equal(t, fingerprintOf(t, topo, "eastus-1", "ec-key"), k.Devices[0].Fingerprint)
			assert.NotEqual(t, k.Fingerprint, k.Devices[0].Fingerprint)
			r := keyReport(t, rep, "ledger", "rsa-key")
			assert.Equal(t, "missing", keyStatus(r)["westus-2"])
			assert.False(t, r.Consistent)
		}},
		{name: "wrong PIN", edit: func(devs []softhsmtest.DeviceSpec) {
			devs[2].PINOverride = map[string]string{"ledger": "other-PIN-5502"}
		}, check: func(t *testing.T, topo *softhsmtest.Topology, rep *inspection.Report) {
			d := deviceReport(t, rep, "westus-1")
			assert.True(t, d.Reachable, "the device answered; one partition's login failed")
			ledger := d.Partitions[1]
			require.Equal(t, "ledger", ledger.Name)
			assert.False(t, ledger.LoggedIn)
			assert.True(t, ledger.TokenFound)
			assert.EqualValues(t, 1, ledger.LoginAttempts, "a rejected PIN is tried once")
			assert.Equal(t, "credential", ledger.ErrorClass)
			assert.Contains(t, ledger.Error, "CKR_PIN_INCORRECT")
			assert.True(t, d.Partitions[0].LoggedIn)
			assert.Equal(t, "unchecked", keyStatus(keyReport(t, rep, "ledger", "rsa-key"))["westus-1"])
			b, err := json.Marshal(rep)
			require.NoError(t, err)
			assert.NotContains(t, string(b), inspectPIN)
			assert.NotContains(t, string(b), "other-PIN-5502")
		}},
		{name: "hung device", fault: func(t *testing.T, topo *softhsmtest.Topology) {
			require.NoError(t, topo.Device("eastus-1").Pause())
			t.Cleanup(func() { _ = topo.Device("eastus-1").Resume() })
		}, check: func(t *testing.T, topo *softhsmtest.Topology, rep *inspection.Report) {
			d := deviceReport(t, rep, "eastus-1")
			assert.False(t, d.Reachable)
			assert.Equal(t, "device_down", d.ErrorClass)
			for _, n := range []string{"eastus-2", "westus-1", "westus-2"} {
				assert.True(t, deviceReport(t, rep, n).Reachable, "%s is not held up by the hung device", n)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs := softhsmtest.DefaultTopology(10 * time.Millisecond)
			if tt.edit != nil {
				tt.edit(devs)
			}
			topo, cfg := inspectTopology(t, devs, "init_timeout: 2s\nhealth: {timeout: 500ms}")
			if tt.fault != nil {
				tt.fault(t, topo)
			}
			// A hung device stays hung until the test ends: Inspect returning before the liveness deadline
			// shows it is bounded by init_timeout and the per-call deadline, not by the device.
			live, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			rep, err := pkcs11ha.Inspect(live, cfg, tt.opts)
			took := time.Since(start)
			require.NoError(t, err)
			require.NoError(t, live.Err(), "Inspect returned at the liveness deadline: it waited for a device")
			b, _ := json.MarshalIndent(rep, "", "  ")
			t.Logf("Inspect took %v:\n%s", took, b)
			assert.NotContains(t, string(b), inspectPIN)
			tt.check(t, topo, rep)
		})
	}
}

// TestInspectConfigError: an invalid config is a *ConfigError, and nothing is opened.
func TestInspectConfigError(t *testing.T) {
	cfg, err := pkcs11ha.ParseConfig([]byte("local_region: x\ndevices: []\npartitions: []\n"))
	require.NoError(t, err)
	_, err = pkcs11ha.Inspect(context.Background(), cfg, inspection.Options{})
	var ce *pkcs11ha.ConfigError
	require.True(t, errors.As(err, &ce), "%v", err)
	assert.True(t, strings.HasPrefix(ce.Field, "devices"))
}
