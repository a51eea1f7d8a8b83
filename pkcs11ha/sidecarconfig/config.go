// Package sidecarconfig is hsm-ha-proxy's configuration file: the library's configuration (pkcs11ha.Topology
// and pkcs11ha.Policy, inline, so that the file reads as one schema) plus the sidecar's own keys: server:,
// clients: and policy.request_timeout. The sidecar, its preflight check and the deployment tests read the
// file through it; the library rejects the sidecar's keys as it rejects any key it does not know.
package sidecarconfig

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/strictyaml"
)

// Config is hsm-ha-proxy's configuration file. Unknown keys are errors, as in the library's file.
type Config struct {
	pkcs11ha.Topology `yaml:",inline"`
	Policy            Policy         `yaml:"policy"`
	Server            ServerConfig   `yaml:"server"`
	Clients           []ClientConfig `yaml:"clients"`
	// KMS is the key behind the Kubernetes KMS v2 door (server.kms; kms.go).
	KMS KMSConfig `yaml:"kms"`
}

// Policy is the library's policy plus the sidecar's per-request deadline, which the file keeps under
// policy: with the rest.
type Policy struct {
	pkcs11ha.Policy `yaml:",inline"`
	// RequestTimeout is the deadline of one request; zero means DefaultRequestTimeout.
	RequestTimeout pkcs11ha.Duration `yaml:"request_timeout"`
}

// DefaultRequestTimeout applies when policy.request_timeout is zero.
const DefaultRequestTimeout = 5 * time.Second

// DefaultListen is where the sidecar listens when server.listen is empty.
const DefaultListen = "unix:///run/hsm-ha-proxy.sock"

// RequestDeadline is policy.request_timeout in effect: every request of either door runs under it.
func (p *Policy) RequestDeadline() time.Duration {
	if p.RequestTimeout <= 0 {
		return DefaultRequestTimeout
	}
	return p.RequestTimeout.D()
}

// ServerConfig is the sidecar's listeners.
type ServerConfig struct {
	Listen string `yaml:"listen"`
	// ListenGroup (a group name or numeric gid) makes a unix:// listener's socket mode 0660 owned by that
	// group, so that applications running as other users can reach the HTTP API; else it is 0600.
	ListenGroup   string            `yaml:"listen_group"`
	TLS           TLSConfig         `yaml:"tls"`
	ShutdownGrace pkcs11ha.Duration `yaml:"shutdown_grace"`
	// PKCS11 is the PKCS#11 front end's socket, unix:///PATH (p11-kit RPC for p11-kit-client.so); empty:
	// off. PKCS11Group (a group name or numeric gid) makes it mode 0660 owned by that group; else 0600.
	PKCS11      string `yaml:"pkcs11"`
	PKCS11Group string `yaml:"pkcs11_group"`
	// PIDFile holds the pid of the process serving now: written once it serves, and rewritten by the new
	// process of a hot upgrade (SIGUSR2, `hsm-ha-proxy upgrade --pid-file`). Empty: none. A relative path is
	// relative to the config file's directory.
	PIDFile string `yaml:"pid_file"`
	// UpgradeTimeout bounds a hot upgrade's new process: from its start to serving (its cluster open and,
	// when the old process was ready, ready too). Past it the new process is killed and the old one keeps
	// serving. Zero means DefaultUpgradeTimeout.
	UpgradeTimeout pkcs11ha.Duration `yaml:"upgrade_timeout"`
	// KMS is the Kubernetes KMS v2 plugin socket, unix:///PATH, for the API server on this host; empty:
	// off. Its key is the top-level kms: section.
	KMS string `yaml:"kms"`
}

// DefaultUpgradeTimeout applies when server.upgrade_timeout is zero.
const DefaultUpgradeTimeout = time.Minute

// UpgradeDeadline is server.upgrade_timeout in effect.
func (s *ServerConfig) UpgradeDeadline() time.Duration {
	if s.UpgradeTimeout <= 0 {
		return DefaultUpgradeTimeout
	}
	return s.UpgradeTimeout.D()
}

// validateListenGroup: server.listen_group applies to a unix:// listener (the default) only.
func (s *ServerConfig) validateListenGroup() error {
	if s.ListenGroup != "" && s.Listen != "" && !strings.HasPrefix(s.Listen, "unix://") {
		return &pkcs11ha.ConfigError{Field: "server.listen_group", Msg: "only used with a unix:// listener"}
	}
	return nil
}

// validatePKCS11 checks server.pkcs11 and server.pkcs11_group (the PKCS#11 front end's socket).
func (s *ServerConfig) validatePKCS11() error {
	if s.PKCS11 == "" {
		if s.PKCS11Group != "" {
			return &pkcs11ha.ConfigError{Field: "server.pkcs11_group", Msg: "only used with server.pkcs11"}
		}
		return nil
	}
	path, ok := strings.CutPrefix(s.PKCS11, "unix://")
	if !ok || !strings.HasPrefix(path, "/") {
		return &pkcs11ha.ConfigError{Field: "server.pkcs11", Msg: fmt.Sprintf("%q: want unix:///PATH (an absolute socket path)", s.PKCS11)}
	}
	listen := s.Listen
	if listen == "" {
		listen = DefaultListen
	}
	if listen == s.PKCS11 {
		return &pkcs11ha.ConfigError{Field: "server.pkcs11", Msg: "must differ from server.listen"}
	}
	return nil
}

// TLSConfig is the sidecar's mutual-TLS material.
type TLSConfig struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
}

// ClientConfig maps a client identity to the partitions it may use.
type ClientConfig struct {
	Name       string   `yaml:"name"`
	UnixUID    *int     `yaml:"unix_uid"`
	UnixGID    *int     `yaml:"unix_gid"`
	CertName   string   `yaml:"cert_name"` // URI/DNS SAN or CN of the client certificate
	Partitions []string `yaml:"partitions"`
}

// Load reads the sidecar's config file, decodes it strictly, makes pin_file and server.tls paths relative
// to the file's directory and validates it (Validate).
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sidecarconfig: %w", err)
	}
	cfg, err := Parse(b)
	if err != nil {
		return nil, err
	}
	cfg.resolvePaths(filepath.Dir(path))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Parse decodes YAML strictly, with the library's rules (unknown keys are errors; an error names its key);
// it does not validate.
func Parse(b []byte) (*Config, error) {
	var cfg Config
	if field, err := strictyaml.Decode(b, &cfg); err != nil {
		if field != "" {
			return nil, &pkcs11ha.ConfigError{Field: field, Msg: err.Error()}
		}
		return nil, fmt.Errorf("pkcs11ha: config: %w", err)
	}
	return &cfg, nil
}

func (c *Config) resolvePaths(dir string) {
	c.Topology.ResolvePaths(dir)
	for _, p := range []*string{&c.Server.TLS.Cert, &c.Server.TLS.Key, &c.Server.TLS.ClientCA, &c.Server.PIDFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// Library returns the library's part of the config, for pkcs11ha.Open. The sidecar's default isolation is
// "process": each device's module in a worker process of its own, so that a crash or a hang inside a
// vendor's module never takes the sidecar, and every application behind it, down.
func (c *Config) Library() *pkcs11ha.Config {
	p := c.Policy.Policy
	if p.Isolation == "" {
		p.Isolation = pkcs11ha.IsolationProcess
	}
	return &pkcs11ha.Config{Topology: c.Topology, Policy: p}
}

// Validate checks the library's part (pkcs11ha.Config.Validate), the request timeout, the PKCS#11 socket
// and the clients against the partitions; it changes nothing. The HTTP listener is checked by Listen.
// Errors are *pkcs11ha.ConfigError naming the field.
func (c *Config) Validate() error {
	if err := c.Library().Validate(); err != nil {
		return err
	}
	if c.Policy.RequestTimeout < 0 {
		return &pkcs11ha.ConfigError{Field: "policy.request_timeout", Msg: fmt.Sprintf("must be positive, got %s", c.Policy.RequestTimeout.D())}
	}
	if err := c.Server.validatePKCS11(); err != nil {
		return err
	}
	if err := c.Server.validateListenGroup(); err != nil {
		return err
	}
	if c.Server.UpgradeTimeout < 0 {
		return &pkcs11ha.ConfigError{Field: "server.upgrade_timeout", Msg: fmt.Sprintf("must be positive, got %s", c.Server.UpgradeTimeout.D())}
	}
	if err := c.validateKMS(); err != nil {
		return err
	}
	return CheckClients(c.Clients, c.PartitionNames())
}

// CheckClients checks the clients: section against the partitions: every entry names an identity and
// only known partitions. The sidecar runs it on every reload too.
func CheckClients(clients []ClientConfig, partitions []string) error {
	known := make(map[string]bool, len(partitions))
	for _, p := range partitions {
		known[p] = true
	}
	for i, c := range clients {
		field := c.Field(i)
		if c.UnixUID == nil && c.UnixGID == nil && c.CertName == "" {
			return &pkcs11ha.ConfigError{Field: field, Msg: "needs unix_uid, unix_gid or cert_name"}
		}
		for _, p := range c.Partitions {
			if !known[p] {
				return &pkcs11ha.ConfigError{Field: field + ".partitions", Msg: fmt.Sprintf("unknown partition %q", p)}
			}
		}
	}
	return nil
}

// Field names entry i of clients: in errors and logs: clients[NAME], or clients[i] when it has no name.
func (c *ClientConfig) Field(i int) string {
	if c.Name != "" {
		return "clients[" + c.Name + "]"
	}
	return "clients[" + strconv.Itoa(i) + "]"
}
