package pkcs11ha

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// Validate checks the config: the topology, every partition's PIN source (each is read, nothing is kept)
// and the policy's bounds. It changes nothing. Errors are *ConfigError naming the field.
func (c *Config) Validate() error {
	_, err := compile(c)
	return err
}

// check validates the topology and returns each partition's PIN, in order.
func (t *Topology) check() ([]string, error) {
	if err := t.checkDevices(); err != nil {
		return nil, err
	}
	if len(t.Partitions) == 0 {
		return nil, &ConfigError{Field: "partitions", Msg: "at least one partition is required"}
	}
	pnames := map[string]bool{}
	pins := make([]string, len(t.Partitions))
	for i := range t.Partitions {
		p := &t.Partitions[i]
		if p.Name == "" {
			return nil, &ConfigError{Field: fmt.Sprintf("partitions[%d].name", i), Msg: "required"}
		}
		f := fmt.Sprintf("partitions[%s]", p.Name)
		if pnames[p.Name] {
			return nil, &ConfigError{Field: f + ".name", Msg: "duplicate partition name"}
		}
		pnames[p.Name] = true
		if p.TokenLabel == "" && p.TokenSerial == "" {
			return nil, &ConfigError{Field: f + ".token_label", Msg: "one of token_label or token_serial is required"}
		}
		pin, err := p.pin(f)
		if err != nil {
			return nil, err
		}
		if err := p.checkReplication(f, len(t.Devices)); err != nil {
			return nil, err
		}
		pins[i] = pin
	}
	for _, d := range t.Devices {
		for sp := range d.TokenSerials {
			if !pnames[sp] {
				return nil, &ConfigError{Field: fmt.Sprintf("devices[%s].token_serials", d.Name), Msg: fmt.Sprintf("unknown partition %q", sp)}
			}
		}
	}
	if err := t.checkSharedModules(); err != nil {
		return nil, err
	}
	return pins, nil
}

// checkDevices validates the devices and the local region.
func (t *Topology) checkDevices() error {
	if len(t.Devices) == 0 {
		return &ConfigError{Field: "devices", Msg: "at least one device is required"}
	}
	if len(t.Devices) > 64 {
		return &ConfigError{Field: "devices", Msg: "at most 64 devices are supported"}
	}
	names := map[string]bool{}
	localSeen := false
	for i := range t.Devices {
		d := &t.Devices[i]
		f := fmt.Sprintf("devices[%d]", i)
		if d.Name == "" {
			return &ConfigError{Field: f + ".name", Msg: "required"}
		}
		f = fmt.Sprintf("devices[%s]", d.Name)
		if names[d.Name] {
			return &ConfigError{Field: f + ".name", Msg: "duplicate device name"}
		}
		names[d.Name] = true
		if d.Region == "" {
			return &ConfigError{Field: f + ".region", Msg: "required"}
		}
		if d.Module == "" {
			return &ConfigError{Field: f + ".module", Msg: "required (path of the PKCS#11 module)"}
		}
		if st, err := os.Stat(d.Module); err != nil {
			return &ConfigError{Field: f + ".module", Msg: fmt.Sprintf("module file %q: %v", d.Module, errors.Unwrap(err))}
		} else if st.IsDir() {
			return &ConfigError{Field: f + ".module", Msg: fmt.Sprintf("%q is a directory", d.Module)}
		}
		if d.Tier != nil && (*d.Tier < 0 || *d.Tier > 7) {
			return &ConfigError{Field: f + ".tier", Msg: "must be between 0 and 7"}
		}
		if d.Region == t.LocalRegion {
			localSeen = true
		}
	}
	if t.LocalRegion == "" {
		return &ConfigError{Field: "local_region", Msg: "required"}
	}
	if !localSeen {
		return &ConfigError{Field: "local_region", Msg: fmt.Sprintf("%q matches no device's region", t.LocalRegion)}
	}
	return nil
}

// checkSharedModules: devices sharing a module instance must tell their tokens apart by serial.
func (t *Topology) checkSharedModules() error {
	byModule := map[devicebackend.ModuleKey][]int{}
	for i, d := range t.Devices {
		k, err := devicebackend.NewModuleKey(d.Module, d.ModuleEnv)
		if err != nil {
			continue // reported by checkDevices for missing files
		}
		byModule[k] = append(byModule[k], i)
	}
	for _, idx := range byModule {
		if len(idx) < 2 {
			continue
		}
		for _, i := range idx {
			d := t.Devices[i]
			for _, p := range t.Partitions {
				if d.TokenSerials[p.Name] == "" {
					return &ConfigError{Field: fmt.Sprintf("devices[%s].token_serials", d.Name),
						Msg: fmt.Sprintf("device shares its module instance with %d other device(s): give the serial of partition %q's token on this device", len(idx)-1, p.Name)}
				}
			}
		}
	}
	return nil
}

// pin reads the partition's PIN from its one source; f names the partition in errors, which never hold
// the PIN.
func (p *PartitionConfig) pin(f string) (string, error) {
	n := 0
	for _, s := range []string{p.PIN, p.PINEnv, p.PINFile} {
		if s != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return "", &ConfigError{Field: f + ".pin_env", Msg: "no PIN source: set one of pin_env, pin_file or pin"}
	case n > 1:
		return "", &ConfigError{Field: f + ".pin_env", Msg: "more than one PIN source: set only one of pin_env, pin_file or pin"}
	}
	switch {
	case p.PIN != "":
		return p.PIN, nil
	case p.PINEnv != "":
		v, ok := os.LookupEnv(p.PINEnv)
		if !ok || v == "" {
			return "", &ConfigError{Field: f + ".pin_env", Msg: fmt.Sprintf("environment variable %s is not set", p.PINEnv)}
		}
		return v, nil
	}
	b, err := os.ReadFile(p.PINFile)
	if err != nil {
		return "", &ConfigError{Field: f + ".pin_file", Msg: fmt.Sprintf("cannot read %q: %v", p.PINFile, errors.Unwrap(err))}
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", &ConfigError{Field: f + ".pin_file", Msg: fmt.Sprintf("%q is empty", p.PINFile)}
	}
	return v, nil
}

// Values of a partition's key_replication.
const (
	ReplicationWrap   = "wrap"
	ReplicationImport = "import"
	ReplicationVendor = "vendor"
)

// checkReplication validates key_replication and min_key_replicas (f names the partition).
func (p *PartitionConfig) checkReplication(f string, devices int) error {
	switch p.KeyReplication {
	case "", ReplicationWrap, ReplicationImport, ReplicationVendor:
	default:
		return &ConfigError{Field: f + ".key_replication", Msg: fmt.Sprintf("want wrap, import or vendor, got %q", p.KeyReplication)}
	}
	if p.MinKeyReplicas < 0 || p.MinKeyReplicas > devices {
		return &ConfigError{Field: f + ".min_key_replicas", Msg: fmt.Sprintf("must be between 1 and the number of devices (%d), got %d", devices, p.MinKeyReplicas)}
	}
	return nil
}

// replication is the partition's key_replication in effect.
func (p *PartitionConfig) replication() string {
	if p.KeyReplication == "" {
		return ReplicationWrap
	}
	return p.KeyReplication
}

// minReplicas is the partition's min_key_replicas in effect for a cluster of n devices.
func (p *PartitionConfig) minReplicas(n int) int {
	if p.MinKeyReplicas > 0 {
		return p.MinKeyReplicas
	}
	return min(2, n)
}
