package sidecarconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// sidecarYAML is docs/configuration.md's example file (one schema for the library and the sidecar) with every
// section and key the sidecar adds; %s is the module path.
const sidecarYAML = `local_region: eastus
devices:
  - name: eastus-1
    region: eastus
    module: %s
    module_env:
      P11_KIT_SERVER_ADDRESS: unix:path=/run/hsm/eastus-1.sock
  - {name: westus-1, region: westus, module: %s, module_env: {P11_KIT_SERVER_ADDRESS: "unix:path=/run/hsm/westus-1.sock"}}
partitions:
  - name: payments
    token_label: payments
    pin_file: pins/payments.pin
policy:
  spill_wait: -1ms
  request_timeout: 3s
  attempt_timeout: {local: 20ms}
  health: {jitter: -1}
server:
  listen: tcp://127.0.0.1:8443
  tls: {cert: tls/cert.pem, key: tls/key.pem, client_ca: /etc/ca.pem}
  shutdown_grace: 7s
clients:
  - { name: payments-app, unix_uid: 1000, partitions: [payments] }
`

func writeSidecarConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	mod := filepath.Join(dir, "module.so")
	require.NoError(t, os.WriteFile(mod, nil, 0o600))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "pins"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pins", "payments.pin"), []byte("1234\n"), 0o600))
	path := filepath.Join(dir, "hsm-ha.yaml")
	require.NoError(t, os.WriteFile(path, []byte(strings.ReplaceAll(body, "%s", mod)), 0o600))
	return path
}

// TestLoadConfigSameYAML: the sidecar reads the file the library's schema describes, plus its own keys,
// with the library's sections handed to the library unchanged.
func TestLoadConfigSameYAML(t *testing.T) {
	path := writeSidecarConfig(t, sidecarYAML)
	dir := filepath.Dir(path)
	cfg, err := Load(path)
	require.NoError(t, err)

	require.Equal(t, "eastus", cfg.LocalRegion)
	require.Len(t, cfg.Devices, 2)
	require.Equal(t, "unix:path=/run/hsm/westus-1.sock", cfg.Devices[1].ModuleEnv["P11_KIT_SERVER_ADDRESS"])
	require.Equal(t, filepath.Join(dir, "pins", "payments.pin"), cfg.Partitions[0].PINFile, "relative to the file")
	require.Equal(t, 3*time.Second, cfg.Policy.RequestDeadline())
	require.Equal(t, -time.Millisecond, cfg.Policy.SpillWait.D())
	require.Equal(t, ServerConfig{Listen: "tcp://127.0.0.1:8443", ShutdownGrace: pkcs11ha.Duration(7 * time.Second),
		TLS: TLSConfig{Cert: filepath.Join(dir, "tls/cert.pem"), Key: filepath.Join(dir, "tls/key.pem"), ClientCA: "/etc/ca.pem"}}, cfg.Server)
	require.Len(t, cfg.Clients, 1)
	require.Equal(t, 1000, *cfg.Clients[0].UnixUID)

	lib := cfg.Library()
	require.Equal(t, cfg.Topology, lib.Topology)
	wantPolicy := cfg.Policy.Policy
	wantPolicy.Isolation = pkcs11ha.IsolationProcess // the sidecar's default: device workers
	require.Equal(t, wantPolicy, lib.Policy)
	require.NoError(t, lib.Validate())

	// The library's own file is the same one without the sidecar's keys.
	var libOnly []string
	skip := false
	for _, l := range strings.Split(sidecarYAML, "\n") {
		switch {
		case strings.HasPrefix(l, "server:") || strings.HasPrefix(l, "clients:"):
			skip = true
		case l != "" && l[0] != ' ':
			skip = false
		}
		if !skip && !strings.Contains(l, "request_timeout") {
			libOnly = append(libOnly, l)
		}
	}
	libPath := writeSidecarConfig(t, strings.Join(libOnly, "\n"))
	want, err := pkcs11ha.LoadConfig(libPath)
	require.NoError(t, err)
	want.Partitions[0].PINFile = lib.Partitions[0].PINFile // another temporary directory
	want.Devices[0].Module, want.Devices[1].Module = lib.Devices[0].Module, lib.Devices[1].Module
	want.Policy.Isolation = pkcs11ha.IsolationProcess
	require.Equal(t, want, lib)
}

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(string) string
		field string
	}{
		{"unknown top-level key", func(s string) string { return s + "colour: blue\n" }, "colour"},
		{"unknown policy key", func(s string) string {
			return strings.Replace(s, "  request_timeout: 3s\n", "  request_timeout: 3s\n  requst_timeout: 3s\n", 1)
		}, "policy.requst_timeout"},
		{"unknown server key", func(s string) string {
			return strings.Replace(s, "  shutdown_grace: 7s\n", "  shutdown_grace: 7s\n  listn: x\n", 1)
		}, "server.listn"},
		{"unknown client key", func(s string) string {
			return strings.Replace(s, "  - { name: payments-app, unix_uid: 1000, partitions: [payments] }", "  - name: payments-app\n    uid: 1000", 1)
		}, "clients[0].uid"},
		{"negative request timeout", func(s string) string { return strings.Replace(s, "request_timeout: 3s", "request_timeout: -3s", 1) }, "policy.request_timeout"},
		{"library bound", func(s string) string { return strings.Replace(s, "local: 20ms", "local: -20ms", 1) }, "policy.attempt_timeout.local"},
		{"library topology", func(s string) string { return strings.Replace(s, "local_region: eastus", "local_region: mars", 1) }, "local_region"},
		{"client with unknown partition", func(s string) string {
			return strings.Replace(s, "partitions: [payments] }", "partitions: [ledger] }", 1)
		}, "clients[payments-app].partitions"},
		{"client without identity", func(s string) string { return strings.Replace(s, "unix_uid: 1000, ", "", 1) }, "clients[payments-app]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeSidecarConfig(t, tc.edit(sidecarYAML)))
			var ce *pkcs11ha.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field, "error: %v", err)
			require.NotContains(t, err.Error(), "1234", "never the PIN")
		})
	}
}

// TestValidateChangesNothing: validating the sidecar's config leaves it as it was (defaults are the
// library's and the server's business, applied to their own copies).
func TestValidateChangesNothing(t *testing.T) {
	body := strings.ReplaceAll(sidecarYAML, "pin_file: pins/payments.pin", "pin: x")
	body = strings.ReplaceAll(body, "%s", os.Args[0]) // any existing file as the module
	cfg, err := Parse([]byte(body))
	require.NoError(t, err)
	before, err := Parse([]byte(body)) // a deep copy
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, before, cfg)
	require.Zero(t, cfg.Policy.OperationTimeout, "no default written in")
}
