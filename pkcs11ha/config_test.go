package pkcs11ha

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
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
		{name: "negative spill_wait: never wait", yaml: base(twoDevs, onePart, "policy:\n  spill_wait: -1ms\n")},
		{name: "negative jitter: none", yaml: base(twoDevs, onePart, "policy:\n  health: {jitter: -1}\n")},
		{name: "jitter above 1", yaml: base(twoDevs, onePart, "policy:\n  health: {jitter: 1.5}\n"), field: "policy.health.jitter"},
		{name: "quantile 1", yaml: base(twoDevs, onePart, "policy:\n  hedge: {quantile: 1}\n"), field: "policy.hedge.quantile"},
		{name: "open_max below open_base", yaml: base(twoDevs, onePart, "policy:\n  breaker: {open_base: 1m, open_max: 1s}\n"), field: "policy.breaker.open_max"},
		{name: "sidecar section server", yaml: base(twoDevs, onePart, "server:\n  listen: unix:///run/x.sock\n"), field: "server"},
		{name: "sidecar section clients", yaml: base(twoDevs, onePart, "clients: []\n"), field: "clients"},
		{name: "sidecar key request_timeout", yaml: base(twoDevs, onePart, "policy:\n  request_timeout: 5s\n"), field: "policy.request_timeout"},
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
		Topology: Topology{
			LocalRegion: "eastus",
			Devices: []DeviceConfig{
				{Name: "e1", Region: "eastus", Module: mod, ModuleEnv: map[string]string{"D": "1"}},
				{Name: "w1", Region: "westus", Module: mod, ModuleEnv: map[string]string{"D": "2"}},
				{Name: "w2", Region: "westus", Module: mod, ModuleEnv: map[string]string{"D": "3"}, Tier: &tier},
			},
			Partitions: []PartitionConfig{{Name: "p", TokenLabel: "p", PIN: "x"}},
		},
		Policy: Policy{AttemptTimeout: TierDurations{Local: Duration(20 * time.Millisecond)}},
	}
	before := cfg.clone()
	require.NoError(t, cfg.Validate())
	require.Equal(t, before, *cfg, "Validate changes nothing")

	s, err := compile(cfg)
	require.NoError(t, err)
	require.Equal(t, before, *cfg, "nor does building the settings")
	p := s.cfg.Policy
	require.Equal(t, 20*time.Millisecond, p.AttemptTimeout.Local.D(), "explicit value kept")
	require.Equal(t, 250*time.Millisecond, p.AttemptTimeout.DR.D(), "default in effect")
	require.Equal(t, []time.Duration{20 * time.Millisecond, 250 * time.Millisecond}, s.router.AttemptTimeout)
	require.Equal(t, uint32(3), p.Breaker.ConsecutiveFailures)
	require.Equal(t, []string{"x"}, s.pins)
	require.Equal(t, 0, cfg.tierOf(0))
	require.Equal(t, 1, cfg.tierOf(1))
	require.Equal(t, 0, cfg.tierOf(2), "tier override wins over region")
	require.Equal(t, []failover.MemberConfig{{Name: "e1", Tier: 0, Capacity: 16}, {Name: "w1", Tier: 1, Capacity: 16}, {Name: "w2", Tier: 0, Capacity: 16}}, s.members)

	// The settings are a copy: changing the caller's config afterwards changes nothing in them.
	cfg.Devices[0].ModuleEnv["D"] = "changed"
	*cfg.Devices[2].Tier = 1
	cfg.Policy.SpillWait = Duration(time.Second)
	require.Equal(t, "1", s.cfg.Devices[0].ModuleEnv["D"])
	require.Equal(t, 0, s.cfg.tierOf(2))
	require.Equal(t, 2*time.Millisecond, s.router.SpillWait)
}

// TestPolicyInEffect: an empty policy runs with the documented defaults (docs/configuration.md's policy table), decided by
// the router, the probes and the library; what is set explicitly is kept, negative "off" values included.
func TestPolicyInEffect(t *testing.T) {
	cfg := testConfig(t)
	s, err := compile(cfg)
	require.NoError(t, err)
	ms := func(n int) Duration { return Duration(time.Duration(n) * time.Millisecond) }
	require.Equal(t, Policy{
		AttemptTimeout:   TierDurations{Local: ms(50), DR: ms(250)},
		OperationTimeout: ms(2000),
		MaxAttempts:      2, // the number of devices
		SpillWait:        ms(2),
		SessionPoolSize:  16,
		MaxAbandoned:     4,
		MaxAbandonedAll:  64,
		EWMADecay:        ms(10000),
		InitialLatency:   TierDurations{Local: ms(5), DR: ms(100)},
		Breaker: BreakerPolicy{ConsecutiveFailures: 3, FailureRatio: 0.5, MinRequests: 20, Window: ms(10000),
			OpenBase: ms(5000), OpenMax: ms(300000), HalfOpenMax: 2},
		Hedge:          HedgePolicy{Budget: 0.05, Floor: ms(2), Quantile: 0.95},
		Health:         HealthPolicy{Interval: ms(5000), DownInterval: ms(1000), Jitter: 0.15, Timeout: ms(1000), Fall: 3, Rise: 2},
		ReinitGrace:    ms(2000),
		InitTimeout:    ms(5000),
		CloseTimeout:   ms(2000),
		StallThreshold: ms(20),

		MaxStuckCalls: 1000, P11KitInstances: 1, VerifySignatures: VerifyRSA,
		Isolation: IsolationNone, AdminTimeout: ms(30000), KeySyncInterval: ms(15000),
	}, s.cfg.Policy)

	cfg.Policy = Policy{SpillWait: ms(-1), StallThreshold: ms(-1), Health: HealthPolicy{Jitter: -1}, HealthKey: "hk", OAEPFallback: true,
		Hedge: HedgePolicy{Enabled: true}, DisablePanic: true}
	s, err = compile(cfg)
	require.NoError(t, err)
	require.Equal(t, -time.Millisecond, s.router.SpillWait, "negative: never wait")
	require.Equal(t, -time.Millisecond, s.router.StallThreshold, "negative: no watchdog")
	require.Equal(t, -1.0, s.monitor.Jitter, "negative: no jitter")
	require.True(t, s.router.Hedge.Enabled)
	require.True(t, s.router.DisablePanic)
	require.Equal(t, ownSettings{OperationTimeout: 2 * time.Second, SessionPoolSize: 16, HealthKey: "hk", ReinitGrace: 2 * time.Second,
		InitTimeout: 5 * time.Second, CloseTimeout: 2 * time.Second, OAEPFallback: true,
		MaxStuckCalls: 1000, P11KitInstances: 1, VerifySignatures: VerifyRSA,
		Isolation: IsolationNone, AdminTimeout: 30 * time.Second, KeySyncInterval: 15 * time.Second}, s.own)
	require.Equal(t, ms(-1), s.cfg.Policy.SpillWait, "the policy in effect says so too")
}

// TestPolicyBindings: every key of the policy section is bound to exactly one setting, and a value out of
// bounds is reported under its key, whichever layer decides the bound.
func TestPolicyBindings(t *testing.T) {
	var p Policy
	bs := bindings(&p, &failover.Config{}, &health.MonitorConfig{}, &ownSettings{})
	bound := map[string]int{}
	for _, b := range bs {
		bound[b.key]++
	}
	keys := yamlKeys(reflect.TypeOf(p), "")
	require.NotEmpty(t, keys)
	for _, k := range keys {
		require.Equal(t, 1, bound[k], "policy.%s bound once", k)
	}
	require.Len(t, bound, len(keys), "no binding without a key")

	bad := map[string]string{
		"attempt_timeout.local": "attempt_timeout: {local: -1ms}", "attempt_timeout.dr": "attempt_timeout: {dr: -1ms}",
		"operation_timeout": "operation_timeout: -1s", "max_attempts": "max_attempts: -1", "session_pool_size": "session_pool_size: -2",
		"max_abandoned_per_device": "max_abandoned_per_device: -1", "max_abandoned_total": "max_abandoned_total: -1",
		"ewma_decay": "ewma_decay: -1s", "initial_latency.local": "initial_latency: {local: -1ms}", "initial_latency.dr": "initial_latency: {dr: -1ms}",
		"breaker.failure_ratio": "breaker: {failure_ratio: 2}", "breaker.window": "breaker: {window: -1s}",
		"breaker.open_base": "breaker: {open_base: -1s}", "breaker.open_max": "breaker: {open_max: 1ms}",
		"hedge.budget": "hedge: {budget: 1.5}", "hedge.floor": "hedge: {floor: -1ms}", "hedge.quantile": "hedge: {quantile: 1}",
		"health.interval": "health: {interval: -1s}", "health.down_interval": "health: {down_interval: -1s}",
		"health.jitter": "health: {jitter: 1.01}", "health.timeout": "health: {timeout: -1s}", "health.fall": "health: {fall: -1}",
		"health.rise": "health: {rise: -1}", "reinit_grace": "reinit_grace: -1s", "init_timeout": "init_timeout: -1s",
		"close_timeout": "close_timeout: -1s", "max_retired_instances": "max_retired_instances: -1",
		"admin_timeout": "admin_timeout: -1s",
	}
	base := testConfig(t)
	for key, yml := range bad {
		t.Run(key, func(t *testing.T) {
			require.Contains(t, bound, key)
			cfg := base.clone()
			var pol Policy
			require.NoError(t, decodeYAML([]byte(yml), &pol))
			cfg.Policy = pol
			err := cfg.Validate()
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, "policy."+key, ce.Field, "error: %v", err)
		})
	}
}

// yamlKeys lists the dotted YAML keys of the leaves of a struct type (a Duration is a leaf).
func yamlKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if f.Type.Kind() == reflect.Struct {
			out = append(out, yamlKeys(f.Type, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

// testConfig is a valid two-device config (local and DR) on a dummy module file.
func testConfig(t *testing.T) *Config {
	t.Helper()
	mod := writeFile(t, t.TempDir(), "module.so", "")
	return &Config{Topology: Topology{
		LocalRegion: "eastus",
		Devices: []DeviceConfig{
			{Name: "e1", Region: "eastus", Module: mod, ModuleEnv: map[string]string{"D": "1"}},
			{Name: "w1", Region: "westus", Module: mod, ModuleEnv: map[string]string{"D": "2"}},
		},
		Partitions: []PartitionConfig{{Name: "p", TokenLabel: "p", PIN: "x"}},
	}}
}
