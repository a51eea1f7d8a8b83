package pkcs11ha

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	mod := writeFile(t, dir, "module.so", "")
	pinFile := writeFile(t, dir, "pin.txt", "5678\n")
	t.Setenv("TEST_PAYMENTS_PIN", "1234")
	t.Setenv("TEST_EMPTY_PIN", "")

	base := func(devices, partitions, extra string) string {
		return "local_region: eastus\n" + devices + partitions + extra
	}
	dev := func(name, region string) string {
		return "  - {name: " + name + ", region: " + region + ", module: " + mod + ", module_env: {DEV: " + name + "}}\n"
	}
	twoDevs := "devices:\n" + dev("eastus-1", "eastus") + dev("westus-1", "westus")
	onePart := "partitions:\n  - {name: payments, token_label: payments, pin_env: TEST_PAYMENTS_PIN}\n"

	tests := []struct {
		name    string
		yaml    string
		field   string // expected ConfigError field; "" = valid
		wantErr string // substring for non-ConfigError failures
	}{
		{name: "valid", yaml: base(twoDevs, onePart, "")},
		{name: "valid pin_file", yaml: base(twoDevs, "partitions:\n  - {name: p, token_serial: \"123\", pin_file: pin.txt}\n", "")},
		{name: "valid policy", yaml: base(twoDevs, onePart, "policy:\n  attempt_timeout: {local: 20ms, dr: 100ms}\n  hedge: {enabled: true}\n")},
		{name: "unknown top-level key", yaml: base(twoDevs, onePart, "colour: blue\n"), wantErr: "colour"},
		{name: "unknown device key", yaml: base("devices:\n  - {name: a, region: eastus, module: "+mod+", modul_env: {}}\n", onePart, ""), wantErr: "modul_env"},
		{name: "no devices", yaml: base("devices: []\n", onePart, ""), field: "devices"},
		{name: "device without name", yaml: base("devices:\n  - {region: eastus, module: "+mod+"}\n", onePart, ""), field: "devices[0].name"},
		{name: "duplicate device", yaml: base("devices:\n"+dev("eastus-1", "eastus")+dev("eastus-1", "eastus"), onePart, ""), field: "devices[eastus-1].name"},
		{name: "missing module file", yaml: base("devices:\n  - {name: a, region: eastus, module: "+filepath.Join(dir, "nope.so")+"}\n", onePart, ""), field: "devices[a].module"},
		{name: "module is a dir", yaml: base("devices:\n  - {name: a, region: eastus, module: "+dir+"}\n", onePart, ""), field: "devices[a].module"},
		{name: "no region", yaml: base("devices:\n  - {name: a, module: "+mod+"}\n", onePart, ""), field: "devices[a].region"},
		{name: "local_region matches nothing", yaml: strings.Replace(base(twoDevs, onePart, ""), "local_region: eastus", "local_region: northpole", 1), field: "local_region"},
		{name: "no partitions", yaml: base(twoDevs, "partitions: []\n", ""), field: "partitions"},
		{name: "duplicate partition", yaml: base(twoDevs, "partitions:\n  - {name: p, token_label: p, pin: x}\n  - {name: p, token_label: p, pin: x}\n", ""), field: "partitions[p].name"},
		{name: "no token label or serial", yaml: base(twoDevs, "partitions:\n  - {name: p, pin: x}\n", ""), field: "partitions[p].token_label"},
		{name: "no pin source", yaml: base(twoDevs, "partitions:\n  - {name: p, token_label: p}\n", ""), field: "partitions[p].pin_env"},
		{name: "two pin sources", yaml: base(twoDevs, "partitions:\n  - {name: p, token_label: p, pin: x, pin_env: TEST_PAYMENTS_PIN}\n", ""), field: "partitions[p].pin_env"},
		{name: "pin_env unset", yaml: base(twoDevs, "partitions:\n  - {name: p, token_label: p, pin_env: TEST_NOT_SET_ANYWHERE}\n", ""), field: "partitions[p].pin_env"},
		{name: "pin_env empty", yaml: base(twoDevs, "partitions:\n  - {name: p, token_label: p, pin_env: TEST_EMPTY_PIN}\n", ""), field: "partitions[p].pin_env"},
		{name: "pin_file missing", yaml: base(twoDevs, "partitions:\n  - {name: p, token_label: p, pin_file: missing.txt}\n", ""), field: "partitions[p].pin_file"},
		{name: "negative duration", yaml: base(twoDevs, onePart, "policy:\n  attempt_timeout: {local: -5ms}\n"), field: "policy.attempt_timeout.local"},
		{name: "negative breaker window", yaml: base(twoDevs, onePart, "policy:\n  breaker: {window: -1s}\n"), field: "policy.breaker.window"},
		{name: "bad duration", yaml: base(twoDevs, onePart, "policy:\n  spill_wait: soon\n"), wantErr: "spill_wait"},
		{name: "ratio out of range", yaml: base(twoDevs, onePart, "policy:\n  hedge: {budget: 1.5}\n"), field: "policy.hedge.budget"},
		{name: "negative pool", yaml: base(twoDevs, onePart, "policy:\n  session_pool_size: -1\n"), field: "policy.session_pool_size"},
		{name: "verify_signatures all", yaml: base(twoDevs, onePart, "policy:\n  verify_signatures: all\n")},
		{name: "verify_signatures bad", yaml: base(twoDevs, onePart, "policy:\n  verify_signatures: ecdsa\n"), field: "policy.verify_signatures"},
		{name: "negative max_stuck_calls", yaml: base(twoDevs, onePart, "policy:\n  max_stuck_calls: -1\n"), field: "policy.max_stuck_calls"},
		{name: "client with unknown partition", yaml: base(twoDevs, onePart, "clients:\n  - {name: app, unix_uid: 1000, partitions: [ledger]}\n"), field: "clients[app].partitions"},
		{name: "client without identity", yaml: base(twoDevs, onePart, "clients:\n  - {name: app, partitions: [payments]}\n"), field: "clients[app]"},
		{name: "bad tier", yaml: base("devices:\n  - {name: a, region: eastus, module: "+mod+", tier: 9}\n", onePart, ""), field: "devices[a].tier"},
		{name: "empty file", yaml: "", field: "(file)"},
		{name: "shared module without serials", yaml: base("devices:\n  - {name: a, region: eastus, module: "+mod+"}\n  - {name: b, region: eastus, module: "+mod+"}\n", onePart, ""), field: "devices[a].token_serials"},
		{name: "shared module with serials", yaml: base("devices:\n  - {name: a, region: eastus, module: "+mod+", token_serials: {payments: \"1\"}}\n  - {name: b, region: eastus, module: "+mod+", token_serials: {payments: \"2\"}}\n", onePart, "")},
		{name: "token_serials unknown partition", yaml: base(twoDevs+"  - {name: c, region: eastus, module: "+mod+", module_env: {X: y}, token_serials: {nope: \"1\"}}\n", onePart, ""), field: "devices[c].token_serials"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, dir, "c.yaml", tc.yaml)
			cfg, err := LoadConfig(p)
			switch {
			case tc.field == "" && tc.wantErr == "":
				require.NoError(t, err)
				require.NotNil(t, cfg)
			case tc.field != "":
				var ce *ConfigError
				require.True(t, errors.As(err, &ce), "want *ConfigError, got %v", err)
				require.Equal(t, tc.field, ce.Field, "error: %v", err)
			default:
				require.Error(t, err)
				require.Contains(t, err.Error(), tc.wantErr)
			}
			if err != nil {
				// A PIN never appears in an error.
				require.NotContains(t, err.Error(), "1234")
				require.NotContains(t, err.Error(), "5678")
			}
		})
	}
	_ = pinFile
}

func TestConfigDefaultsAndTiers(t *testing.T) {
	dir := t.TempDir()
	mod := writeFile(t, dir, "module.so", "")
	tier := 0
	cfg := &Config{
		LocalRegion: "eastus",
		Devices: []DeviceConfig{
			{Name: "e1", Region: "eastus", Module: mod, ModuleEnv: map[string]string{"D": "1"}},
			{Name: "w1", Region: "westus", Module: mod, ModuleEnv: map[string]string{"D": "2"}},
			{Name: "w2", Region: "westus", Module: mod, ModuleEnv: map[string]string{"D": "3"}, Tier: &tier},
		},
		Partitions: []PartitionConfig{{Name: "p", TokenLabel: "p", PIN: "x"}},
		Policy:     Policy{AttemptTimeout: TierDurations{Local: Duration(20 * time.Millisecond)}},
	}
	require.NoError(t, cfg.Validate())
	require.Equal(t, 20*time.Millisecond, cfg.Policy.AttemptTimeout.Local.D(), "explicit value kept")
	require.Equal(t, 250*time.Millisecond, cfg.Policy.AttemptTimeout.DR.D(), "default filled")
	require.Equal(t, uint32(3), cfg.Policy.Breaker.ConsecutiveFailures)
	require.Equal(t, VerifyRSA, cfg.Policy.VerifySignatures, "RSA signatures are verified by default")
	require.Equal(t, 1000, cfg.Policy.MaxStuckCalls)
	require.Zero(t, cfg.Policy.MaxRetired, "no cap of its own: max_stuck_calls bounds retired instances")
	require.Equal(t, 1, cfg.Policy.P11KitInstances, "lanes are opt-in")
	require.Equal(t, 0, cfg.tierOf(0))
	require.Equal(t, 1, cfg.tierOf(1))
	require.Equal(t, 0, cfg.tierOf(2), "tier override wins over region")
}
