package deploy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// sidecarConfig is what the deployment tests need to know about a sidecar config.
type sidecarConfig struct {
	listen        string            // server.listen
	pkcs11        string            // server.pkcs11, the PKCS#11 front end ("" when off)
	shutdownGrace time.Duration     // server.shutdown_grace (10s when unset)
	pinFiles      map[string]string // partition -> pin_file
	otherPINs     []string          // partitions whose PIN is inline or in the environment
	clients       map[int][]string  // unix_uid -> partitions it may use
	partitions    []string
}

// parseSidecarConfig reads a sidecar config as `hsm-ha-proxy serve` does, then validates it with its
// deployment's files (modules, PIN files) replaced by temporary ones. It is the only function here that
// knows the config's Go types: sidecarconfig.Config (the library's Topology and Policy plus the sidecar's
// server: and clients:).
func parseSidecarConfig(t *testing.T, data []byte) sidecarConfig {
	t.Helper()
	var raw struct {
		Server struct {
			PKCS11 string `yaml:"pkcs11"`
		} `yaml:"server"`
	}
	require.NoError(t, yaml.Unmarshal(data, &raw))
	cfg, err := sidecarconfig.Parse(data)
	var ce *pkcs11ha.ConfigError
	if errors.As(err, &ce) && ce.Field == "server.pkcs11" {
		// A build without the PKCS#11 front end: check everything else.
		t.Logf("this build's config has no server.pkcs11 (the PKCS#11 front end); checking the rest")
		cfg, err = sidecarconfig.Parse(withoutServerKey(t, data, "pkcs11"))
	}
	require.NoError(t, err)

	sc := sidecarConfig{listen: cfg.Server.Listen, pkcs11: raw.Server.PKCS11, shutdownGrace: cfg.Server.ShutdownGrace.D(),
		pinFiles: map[string]string{}, clients: map[int][]string{}}
	if sc.shutdownGrace == 0 {
		sc.shutdownGrace = 10 * time.Second
	}
	dir := t.TempDir()
	modules := map[string]string{} // the same path stays one file: devices sharing a module must say so
	for i := range cfg.Devices {
		d := &cfg.Devices[i]
		if modules[d.Module] == "" {
			modules[d.Module] = filepath.Join(dir, fmt.Sprintf("module%d.so", len(modules)))
			require.NoError(t, os.WriteFile(modules[d.Module], nil, 0o644))
		}
		d.Module = modules[d.Module]
	}
	for i := range cfg.Partitions {
		p := &cfg.Partitions[i]
		sc.partitions = append(sc.partitions, p.Name)
		if p.PINFile == "" {
			sc.otherPINs = append(sc.otherPINs, p.Name)
			continue
		}
		sc.pinFiles[p.Name] = p.PINFile
		p.PINFile = filepath.Join(dir, p.Name+".pin")
		require.NoError(t, os.WriteFile(p.PINFile, []byte("1234\n"), 0o600))
	}
	for _, c := range cfg.Clients {
		if c.UnixUID != nil {
			sc.clients[*c.UnixUID] = append(sc.clients[*c.UnixUID], c.Partitions...)
		}
	}
	require.NoError(t, cfg.Validate())
	return sc
}

// withoutServerKey returns the config YAML without server.<key>.
func withoutServerKey(t *testing.T, data []byte, key string) []byte {
	t.Helper()
	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal(data, &doc))
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "server" {
			continue
		}
		srv := root.Content[i+1]
		for j := 0; j+1 < len(srv.Content); j += 2 {
			if srv.Content[j].Value == key {
				srv.Content = append(srv.Content[:j], srv.Content[j+2:]...)
				break
			}
		}
	}
	out, err := yaml.Marshal(&doc)
	require.NoError(t, err)
	return out
}
