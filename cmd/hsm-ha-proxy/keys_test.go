package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

func TestKeysUsage(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		out  string
	}{
		{"no verb", []string{"keys"}, "usage:"},
		{"unknown verb", []string{"keys", "frob", "--config", "x", "--partition", "p"}, `unknown command "frob"`},
		{"no partition", []string{"keys", "list", "--config", "x"}, "--partition are required"},
		{"generate without algorithm", []string{"keys", "generate", "--config", "x", "--partition", "p", "--label", "l"}, "--algorithm are required"},
		{"bad id", []string{"keys", "destroy", "--config", "x", "--partition", "p", "--label", "l", "--id", "zz"}, "--id: not hex"},
		{"init-kek without SO PIN", []string{"keys", "init-kek", "--config", "x", "--partition", "p"}, "--so-pin-file is required"},
		{"missing config", []string{"keys", "list", "--config", "/nonexistent/x.yaml", "--partition", "p"}, "keys list:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			assert.Equal(t, 2, run(tt.args, &out, &errOut))
			assert.Contains(t, out.String()+errOut.String(), tt.out)
		})
	}
}

// keysCLI runs the built binary's keys command and returns its exit code and standard output (its
// standard error is logged).
func keysCLI(t *testing.T, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"keys"}, args...)...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if stderr.Len() > 0 {
		t.Logf("keys %v stderr:\n%s", args[0], stderr.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	require.NoError(t, err)
	return 0, out.String()
}

// devicePub reads label's public key from device d itself with pkcs11-tool (nil: none there).
func devicePub(t *testing.T, d *softhsmtest.Device, label string) []byte {
	t.Helper()
	der := harnesstest.DeviceObject(t, d, "payments", "pubkey", label)
	if der != nil {
		_, err := x509.ParsePKIXPublicKey(der)
		require.NoError(t, err)
	}
	return der
}

// TestKeysCLI: generate, list, destroy and sync through the binary on the four separate-process devices
// (key_replication import), each device read by itself; two processes generating the same label at
// once leave one key.
func TestKeysCLI(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Keys: []softhsmtest.KeySpec{}})
	bin := buildBinary(t)
	cfg := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(cfg, softhsmtest.ConfigOptions{ServerYAML: "listen: unix://" + filepath.Join(t.TempDir(), "s.sock"),
		PartitionYAML: "key_replication: import"}))
	base := []string{"--config", cfg, "--partition", "payments"}

	for _, alg := range []string{"rsa-2048", "ec-p256"} {
		code, out := keysCLI(t, bin, append([]string{"generate", "--label", "cli-" + alg, "--algorithm", alg}, base...)...)
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "on eastus-1, eastus-2, westus-1, westus-2")
		ref := devicePub(t, topo.Devices[0], "cli-"+alg)
		require.NotNil(t, ref)
		for _, d := range topo.Devices[1:] {
			require.Equal(t, ref, devicePub(t, d, "cli-"+alg), "the same public key on %s", d.Name)
		}
	}
	code, out := keysCLI(t, bin, append([]string{"generate", "--label", "cli-ec-p256", "--algorithm", "ec-p256"}, base...)...)
	require.Equal(t, 1, code, "refused: the label exists: %s", out)
	code, out = keysCLI(t, bin, append([]string{"generate", "--label", "x", "--algorithm", "dsa-1024"}, base...)...)
	require.Equal(t, 2, code, out)

	code, out = keysCLI(t, bin, append([]string{"list", "--json"}, base...)...)
	require.Equal(t, 0, code, out)
	var inv pkcs11ha.Inventory
	require.NoError(t, json.Unmarshal([]byte(out), &inv), out)
	require.Len(t, inv.Devices, 4)
	for _, d := range inv.Devices {
		require.Len(t, d.Keys, 2, d.Device)
	}
	code, out = keysCLI(t, bin, append([]string{"list"}, base...)...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "cli-rsa-2048")

	code, out = keysCLI(t, bin, append([]string{"destroy", "--label", "cli-ec-p256"}, base...)...)
	require.Equal(t, 0, code, out)
	for _, d := range topo.Devices {
		require.Nil(t, devicePub(t, d, "cli-ec-p256"), "gone from %s", d.Name)
	}
	code, out = keysCLI(t, bin, append([]string{"sync", "--dry-run"}, base...)...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "0 action(s) would do")

	// Two processes, one label, at once.
	var wg sync.WaitGroup
	codes := make([]int, 2)
	outs := make([]string, 2)
	for i := range 2 {
		wg.Go(func() {
			codes[i], outs[i] = keysCLI(t, bin, append([]string{"generate", "--label", "cli-race", "--algorithm", "ec-p256"}, base...)...)
		})
	}
	wg.Wait()
	t.Logf("two generates at once: exit %v\n%s\n%s", codes, outs[0], outs[1])
	_, out = keysCLI(t, bin, append([]string{"list", "--json"}, base...)...)
	require.NoError(t, json.Unmarshal([]byte(out), &inv), out)
	fps := map[string]int{}
	for _, d := range inv.Devices {
		for _, k := range d.Keys {
			if k.Label == "cli-race" {
				fps[k.Fingerprint]++
			}
		}
	}
	require.LessOrEqual(t, len(fps), 1, "at most one key: %v", fps)
	for fp, n := range fps {
		// On every device its maker reported (a device that went away during the race is caught up by a
		// sync under key_replication wrap; import cannot).
		i := slices.Index(codes, 0)
		require.GreaterOrEqual(t, i, 0, "the key left is one a process reported created")
		require.Contains(t, outs[i], fp)
		_, on, _ := strings.Cut(strings.TrimSpace(outs[i]), ") on ")
		require.Equal(t, len(strings.Split(on, ", ")), n, fmt.Sprintf("key %s on every device its maker named", fp))
		require.GreaterOrEqual(t, n, 2, "on min_key_replicas")
	}
}
