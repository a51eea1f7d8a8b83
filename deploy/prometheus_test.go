package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// promtool returns the path of promtool, or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; make test installs it)")
	}
	return p
}

// runPromtool runs promtool in dir and fails the test with its output unless it succeeds.
func runPromtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

// TestPrometheusRules: `promtool check rules` accepts alerts.yml and `promtool test rules` passes its unit
// tests; every alert has a severity and a summary, and the main alerts are among those unit-tested.
func TestPrometheusRules(t *testing.T) {
	out := runPromtool(t, "prometheus", "check", "rules", "alerts.yml")
	assert.Contains(t, out, "SUCCESS")
	out = runPromtool(t, "prometheus", "test", "rules", "alerts_test.yml")
	assert.Contains(t, out, "SUCCESS")

	var rf ruleFile
	readYAML(t, alertsPath, &rf)
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts[r.Alert] = true
				assert.Contains(t, []string{"warning", "critical"}, r.Labels["severity"], r.Alert)
			}
		}
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				AlertName string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, alertTestsPath, &tests)
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			require.True(t, alerts[a.AlertName], "%s tests an unknown alert %s", alertTestsPath, a.AlertName)
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			}
		}
	}
	for _, a := range []string{"PKCS11HADeviceDown", "PKCS11HALocalTierDown", "PKCS11HABreakerOpen",
		"PKCS11HADRServingWhileLocalUp", "PKCS11HAStuckCalls", "PKCS11HARetiredInstancesNearCap",
		"PKCS11HAErrorBudgetBurnFast", "PKCS11HALatencySLO", "HSMHAProxyNotReady"} {
		assert.True(t, fires[a], "%s has a unit test in which it fires", a)
	}
}

// TestPrometheusConfig: `promtool check config` accepts the example prometheus.yml (and the rules it
// loads). Debian's promtool is built without Kubernetes service discovery; with it, the Kubernetes job is
// left out and the rest checked.
func TestPrometheusConfig(t *testing.T) {
	cmd := exec.Command(promtool(t), "check", "config", "prometheus.yml")
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err == nil {
		return
	}
	require.Contains(t, string(out), "field kubernetes_sd_configs not found", "promtool check config:\n%s", out)
	t.Log("this promtool has no Kubernetes service discovery (Debian's build): checking the other jobs")

	b, err := os.ReadFile(filepath.Join("prometheus", "prometheus.yml"))
	require.NoError(t, err)
	var cfg map[string]any
	require.NoError(t, yaml.Unmarshal(b, &cfg))
	var kept []any
	for _, sc := range cfg["scrape_configs"].([]any) {
		if _, k8s := sc.(map[string]any)["kubernetes_sd_configs"]; !k8s {
			kept = append(kept, sc)
		}
	}
	require.NotEmpty(t, kept)
	cfg["scrape_configs"] = kept
	dir := t.TempDir()
	b, err = yaml.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), b, 0o644))
	rules, err := os.ReadFile(alertsPath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644))
	out2 := runPromtool(t, dir, "check", "config", "prometheus.yml")
	assert.Contains(t, out2, "SUCCESS")
}
