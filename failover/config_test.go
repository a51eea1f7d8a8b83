package failover

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNewValidation(t *testing.T) {
	ok := members(0, 0, 1, 1)
	tests := []struct {
		name    string
		mutate  func(*Config)
		members []MemberConfig
		field   string
	}{
		{"no members", nil, []MemberConfig{}, "members:"},
		{"too many members", nil, make([]MemberConfig, 65), "members:"},
		{"empty name", nil, []MemberConfig{{Name: ""}}, "members[0].Name"},
		{"duplicate name", nil, []MemberConfig{{Name: "a"}, {Name: "a"}}, "members[1].Name"},
		{"negative tier", nil, []MemberConfig{{Name: "a", Tier: -1}}, "members[0].Tier"},
		{"negative capacity", nil, []MemberConfig{{Name: "a", Capacity: -1}}, "members[0].Capacity"},
		{"attempt timeout", func(c *Config) { c.AttemptTimeout = []time.Duration{time.Millisecond, -1} }, ok, "Config.AttemptTimeout[1]"},
		{"initial latency", func(c *Config) { c.InitialLatency = []time.Duration{-1} }, ok, "Config.InitialLatency[0]"},
		{"max attempts", func(c *Config) { c.MaxAttempts = -1 }, ok, "Config.MaxAttempts"},
		{"abandoned per member", func(c *Config) { c.MaxAbandonedPerMember = -1 }, ok, "Config.MaxAbandonedPerMember"},
		{"abandoned total", func(c *Config) { c.MaxAbandonedTotal = -1 }, ok, "Config.MaxAbandonedTotal"},
		{"ewma decay", func(c *Config) { c.EWMADecay = -1 }, ok, "Config.EWMADecay"},
		{"failure ratio", func(c *Config) { c.Breaker.FailureRatio = 1.5 }, ok, "Config.Breaker.FailureRatio"},
		{"window", func(c *Config) { c.Breaker.Window = -1 }, ok, "Config.Breaker.Window"},
		{"open max below base", func(c *Config) { c.Breaker.OpenBase, c.Breaker.OpenMax = time.Minute, time.Second }, ok, "Config.Breaker.OpenMax"},
		{"hedge budget", func(c *Config) { c.Hedge.Budget = 2 }, ok, "Config.Hedge.Budget"},
		{"hedge floor", func(c *Config) { c.Hedge.Floor = -1 }, ok, "Config.Hedge.Floor"},
		{"hedge quantile", func(c *Config) { c.Hedge.Quantile = 1 }, ok, "Config.Hedge.Quantile"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tc.mutate != nil {
				tc.mutate(&cfg)
			}
			r, err := New(cfg, tc.members)
			require.Nil(t, r)
			require.ErrorContains(t, err, tc.field)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	r, err := New(Config{}, members(0, 0, 1, 1))
	require.NoError(t, err)
	defer r.Close()
	d := DefaultConfig()
	require.Equal(t, d.AttemptTimeout, r.cfg.AttemptTimeout)
	require.Equal(t, d.Breaker, r.cfg.Breaker)
	require.Equal(t, d.Hedge, r.cfg.Hedge)
	require.Equal(t, 4, r.cfg.MaxAttempts)
	require.Equal(t, 2*time.Millisecond, r.cfg.SpillWait)
	require.Equal(t, 100*time.Second, r.forgiveAfter, "min(OpenMax, 10 windows)")
	require.Equal(t, 50*time.Millisecond, r.members[0].timeout)
	require.Equal(t, 250*time.Millisecond, r.members[3].timeout)
	require.Equal(t, 5*time.Millisecond, r.Latency(1).Value())
	require.Equal(t, 100*time.Millisecond, r.Latency(2).Value())

	// A tier beyond the per-tier slices uses their last entry.
	r2, err := New(Config{}, []MemberConfig{{Name: "far", Tier: 5}})
	require.NoError(t, err)
	defer r2.Close()
	require.Equal(t, 250*time.Millisecond, r2.members[0].timeout)
	require.Equal(t, 100*time.Millisecond, r2.Latency(0).Value())

	// Negative SpillWait disables the wait, and stays negative: resolving again does not bring the default.
	r3, err := New(Config{SpillWait: -1}, members(0))
	require.NoError(t, err)
	defer r3.Close()
	require.Equal(t, time.Duration(-1), r3.cfg.SpillWait)
	again, err := r3.cfg.Resolve(members(0))
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), again.SpillWait)

	// A zero entry of a per-tier slice takes its tier's default.
	c, err := Config{AttemptTimeout: []time.Duration{20 * time.Millisecond, 0}, InitialLatency: []time.Duration{0, time.Second}}.Resolve(members(0, 1))
	require.NoError(t, err)
	require.Equal(t, []time.Duration{20 * time.Millisecond, 250 * time.Millisecond}, c.AttemptTimeout)
	require.Equal(t, []time.Duration{5 * time.Millisecond, time.Second}, c.InitialLatency)
}
