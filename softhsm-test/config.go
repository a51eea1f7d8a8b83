package softhsmtest

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// PIN styles for ConfigOptions.PINStyle.
const (
	PINInline = "inline" // pin: "1234" in the config
	PINFile   = "file"   // pin_file: <Dir>/pins/<partition>.pin, written by ConfigYAML (mode 0600)
	PINEnv    = "env"    // pin_env: <PARTITION>_PIN; the caller sets the variables (Topology.PINEnv)
)

// ConfigOptions adds the parts of the pkcs11ha configuration that are not about devices.
type ConfigOptions struct {
	PolicyYAML  string // raw YAML mapping inserted under policy: (omitted if empty)
	ServerYAML  string // raw YAML mapping inserted under server: (sidecar)
	ClientsYAML string // raw YAML sequence inserted under clients: (sidecar)
	PINStyle    string // PINInline (default), PINFile or PINEnv
	// NoRelays points every device's P11_KIT_SERVER_ADDRESS at its server's own socket
	// (Device.ServerSocket) instead of its relay: what a benchmark that wants no test wire between the
	// cluster and the devices uses. The relay's faults (delay, hang, down, reset) then miss the cluster;
	// process faults (Kill, Pause) still hit it.
	NoRelays bool
	// PartitionYAML is raw YAML (one "key: value" per line) added to every partition, e.g.
	// "key_replication: import".
	PartitionYAML string
}

// ConfigYAML returns the pkcs11ha configuration (docs/ARCHITECTURE.md, "Configuration") for this topology:
// local_region, every device with its module and module_env, every partition by token label with its PIN, and
// the raw sections of opts. Devices with a PINOverride still get the partition's normal PIN, as a config that
// is wrong for one device would. The result is checked to be valid YAML.
func (t *Topology) ConfigYAML(opts ConfigOptions) ([]byte, error) {
	style := opts.PINStyle
	if style == "" {
		style = PINInline
	}
	if style != PINInline && style != PINFile && style != PINEnv {
		return nil, fmt.Errorf("softhsmtest: ConfigOptions.PINStyle %q: want %q, %q or %q", style, PINInline, PINFile, PINEnv)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# pkcs11ha configuration written by softhsmtest for %s\n", t.Dir)
	fmt.Fprintf(&b, "local_region: %s\n", yamlQuote(t.LocalRegion))
	b.WriteString("devices:\n")
	for _, d := range t.Devices {
		fmt.Fprintf(&b, "  - name: %s\n", yamlQuote(d.Name))
		fmt.Fprintf(&b, "    region: %s\n", yamlQuote(d.Region))
		fmt.Fprintf(&b, "    module: %s\n", yamlQuote(d.ModulePath))
		env := d.ModuleEnv
		if opts.NoRelays && d.ServerSocket != "" {
			env = maps.Clone(env)
			env["P11_KIT_SERVER_ADDRESS"] = "unix:path=" + d.ServerSocket
		}
		if len(env) > 0 {
			b.WriteString("    module_env:\n")
			names := make([]string, 0, len(env))
			for k := range env {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				fmt.Fprintf(&b, "      %s: %s\n", yamlQuote(k), yamlQuote(env[k]))
			}
		}
	}
	b.WriteString("partitions:\n")
	for _, p := range t.Partitions {
		fmt.Fprintf(&b, "  - name: %s\n", yamlQuote(p.Name))
		fmt.Fprintf(&b, "    token_label: %s\n", yamlQuote(p.TokenLabel))
		switch style {
		case PINInline:
			fmt.Fprintf(&b, "    pin: %s\n", yamlQuote(p.PIN))
		case PINFile:
			path, err := t.writePINFile(p)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, "    pin_file: %s\n", yamlQuote(path))
		case PINEnv:
			fmt.Fprintf(&b, "    pin_env: %s\n", yamlQuote(PINEnvVar(p.Name)))
		}
		for _, line := range strings.Split(strings.TrimSpace(dedent(opts.PartitionYAML)), "\n") {
			if strings.TrimSpace(line) != "" {
				fmt.Fprintf(&b, "    %s\n", strings.TrimSpace(line))
			}
		}
	}
	for _, sec := range []struct {
		name, text string
		kind       yaml.Kind
	}{
		{"policy", opts.PolicyYAML, yaml.MappingNode},
		{"server", opts.ServerYAML, yaml.MappingNode},
		{"clients", opts.ClientsYAML, yaml.SequenceNode},
	} {
		if strings.TrimSpace(sec.text) == "" {
			continue
		}
		text := dedent(sec.text)
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(text), &n); err != nil {
			return nil, fmt.Errorf("softhsmtest: ConfigOptions %s YAML: %w", sec.name, err)
		}
		if len(n.Content) != 1 || n.Content[0].Kind != sec.kind {
			want := "a mapping"
			if sec.kind == yaml.SequenceNode {
				want = "a sequence"
			}
			return nil, fmt.Errorf("softhsmtest: ConfigOptions %s YAML must be %s", sec.name, want)
		}
		b.WriteString(sec.name + ":\n")
		for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
			if strings.TrimSpace(line) == "" {
				b.WriteString("\n")
				continue
			}
			b.WriteString("  " + line + "\n")
		}
	}
	var check map[string]any
	if err := yaml.Unmarshal(b.Bytes(), &check); err != nil {
		return nil, fmt.Errorf("softhsmtest: generated config is not valid YAML: %w", err)
	}
	return b.Bytes(), nil
}

// WriteConfig writes ConfigYAML(opts) to path (mode 0600: it may hold PINs).
func (t *Topology) WriteConfig(path string, opts ConfigOptions) error {
	data, err := t.ConfigYAML(opts)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// PINEnvVar is the pin_env variable ConfigYAML uses with PINEnv: the partition name in upper case with
// other characters than letters and digits replaced by "_", then "_PIN" (payments -> PAYMENTS_PIN).
func PINEnvVar(partition string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, partition) + "_PIN"
}

// PINEnv returns the environment a client of a PINEnv config needs (variable -> PIN).
func (t *Topology) PINEnv() map[string]string {
	env := make(map[string]string, len(t.Partitions))
	for _, p := range t.Partitions {
		env[PINEnvVar(p.Name)] = p.PIN
	}
	return env
}

func (t *Topology) writePINFile(p PartitionSpec) (string, error) {
	dir := filepath.Join(t.Dir, "pins")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, p.Name+".pin")
	return path, os.WriteFile(path, []byte(p.PIN), 0o600)
}

// yamlQuote returns s as a YAML double-quoted scalar (Go's escapes are a subset of YAML's).
func yamlQuote(s string) string { return strconv.Quote(s) }

// dedent removes the indentation common to every non-blank line.
func dedent(s string) string {
	lines := strings.Split(s, "\n")
	common := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " "))
		if common < 0 || n < common {
			common = n
		}
	}
	if common <= 0 {
		return s
	}
	for i, l := range lines {
		if len(l) >= common {
			lines[i] = l[common:]
		} else {
			lines[i] = strings.TrimLeft(l, " ")
		}
	}
	return strings.Join(lines, "\n")
}
