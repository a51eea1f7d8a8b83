package pkcs11ha

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/strictyaml"
)

// Duration is a time.Duration written in YAML as a Go duration string ("50ms", "5s").
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as \"50ms\": %w", n.Line, err)
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the library's configuration: where the devices are and what they hold (Topology), and how
// calls are routed (Policy, whose zero fields mean "the default"). Open takes its own copy; nothing in it is
// changed by Validate or Open.
//
// A program that reads a larger file embeds Topology and a type embedding Policy, each with
// `yaml:",inline"` (hsm-ha-proxy adds its server: and clients: sections and policy.request_timeout this
// way, in package sidecarconfig).
type Config struct {
	Topology `yaml:",inline"`
	Policy   Policy `yaml:"policy"`
}

// Topology is where the devices are and what they hold: the local region, the devices and the partitions.
type Topology struct {
	LocalRegion string            `yaml:"local_region"`
	Devices     []DeviceConfig    `yaml:"devices"`
	Partitions  []PartitionConfig `yaml:"partitions"`
}

// DeviceConfig is one HSM (appliance). Devices with the same module path and module_env share one module
// instance, as partitions of one Luna client do.
type DeviceConfig struct {
	Name      string            `yaml:"name"`
	Region    string            `yaml:"region"`
	Module    string            `yaml:"module"`
	ModuleEnv map[string]string `yaml:"module_env"`
	// Tier overrides the tier derived from local_region (0 local, 1 DR).
	Tier *int `yaml:"tier"`
	// TokenSerials picks this device's token for a partition by serial (partition -> serial). Needed when
	// several devices share one module instance (a Luna client lists every appliance's partitions as slots
	// of one module, with the same label): the label alone would find the same slot for each of them.
	TokenSerials map[string]string `yaml:"token_serials"`
	// NonBlocking declares that the module never blocks a call past a moment's computation: an in-process
	// software token such as SoftHSM, not a network HSM's client. Calls then run on the caller's goroutine
	// instead of being handed to an attempt worker (cheaper by a goroutine hand-off per call); a watchdog
	// still ends each call's wait at its deadline, but a call stuck in a module that does block after all
	// holds its caller. Ignored under policy.isolation process, whose calls never block the caller.
	NonBlocking bool `yaml:"non_blocking"`
}

// PartitionConfig is one application's HA group: the same token cloned on every device.
type PartitionConfig struct {
	Name        string `yaml:"name"`
	TokenLabel  string `yaml:"token_label"`
	TokenSerial string `yaml:"token_serial"`
	PIN         string `yaml:"pin"`
	PINEnv      string `yaml:"pin_env"`
	PINFile     string `yaml:"pin_file"`
	// KeyReplication is how a new key reaches every device (docs/keys.md): "wrap" (the default: made in
	// one device, carried to the others wrapped under the partition's trusted key-encryption key),
	// "import" (made in memory, imported into each device, wiped) or "vendor" (the device replicates by
	// itself: made there, verified).
	KeyReplication string `yaml:"key_replication"`
	// MinKeyReplicas is how many devices must hold a new key for its creation to succeed (default 2, or
	// the number of devices when fewer).
	MinKeyReplicas int `yaml:"min_key_replicas"`
}

// LoadConfig reads a YAML config file, decodes it strictly (ParseConfig), makes pin_file paths relative to
// the file's directory and validates it (Validate). Policy defaults are not written into it: Open applies
// them, and Cluster.Config shows them.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pkcs11ha: config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, err
	}
	cfg.ResolvePaths(filepath.Dir(path))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// ParseConfig decodes YAML strictly (unknown keys are errors; an error names its key). It neither validates nor fills defaults: Validate checks,
// Open applies the defaults to its own copy.
func ParseConfig(b []byte) (*Config, error) {
	var cfg Config
	if err := decodeYAML(b, &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// decodeYAML decodes a config file strictly into v: unknown keys are errors, and an error names the key it
// is about (*ConfigError).
func decodeYAML(b []byte, v any) error {
	return decodeError(strictyaml.Decode(b, v))
}

// decodeError is the *ConfigError of a strict decode's result (field, err), naming the field when the
// decoder's complaint can be placed; nil when err is.
func decodeError(field string, err error) error {
	switch {
	case err == nil:
		return nil
	case field != "":
		return &ConfigError{Field: field, Msg: err.Error()}
	}
	return fmt.Errorf("pkcs11ha: config: %w", err)
}

// ResolvePaths makes relative pin_file paths relative to dir (the config file's directory).
func (t *Topology) ResolvePaths(dir string) {
	for i := range t.Partitions {
		if p := &t.Partitions[i].PINFile; *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// tierOf returns the routing tier of device i.
func (t *Topology) tierOf(i int) int {
	d := t.Devices[i]
	if d.Tier != nil {
		return *d.Tier
	}
	if d.Region == t.LocalRegion {
		return 0
	}
	return 1
}

// PartitionNames lists the configured partitions, sorted.
func (t *Topology) PartitionNames() []string {
	out := make([]string, 0, len(t.Partitions))
	for _, p := range t.Partitions {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// clone returns a deep copy: the cluster's own, which no caller can change under it.
func (c *Config) clone() Config {
	out := *c
	out.Devices = slices.Clone(c.Devices)
	for i := range out.Devices {
		d := &out.Devices[i]
		d.ModuleEnv = maps.Clone(d.ModuleEnv)
		d.TokenSerials = maps.Clone(d.TokenSerials)
		if d.Tier != nil {
			t := *d.Tier
			d.Tier = &t
		}
	}
	out.Partitions = slices.Clone(c.Partitions)
	return out
}
