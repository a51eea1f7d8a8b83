package proxy

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// Config is hsm-ha-proxy's configuration file: the library's configuration (pkcs11ha.Topology and
// pkcs11ha.Policy, inline, so that the file reads as one schema) plus the sidecar's server: and clients:
// sections and policy.request_timeout. Unknown keys are errors, as in the library's file.
type Config struct {
	pkcs11ha.Topology `yaml:",inline"`
	Policy            Policy         `yaml:"policy"`
	Server            ServerConfig   `yaml:"server"`
	Clients           []ClientConfig `yaml:"clients"`
}

// Policy is the library's policy plus the sidecar's per-request deadline, which the file keeps under
// policy: with the rest.
type Policy struct {
	pkcs11ha.Policy `yaml:",inline"`
	// RequestTimeout is the deadline of one request; zero means defaultRequestTimeout.
	RequestTimeout pkcs11ha.Duration `yaml:"request_timeout"`
}

// defaultRequestTimeout applies when policy.request_timeout is zero.
const defaultRequestTimeout = 5 * time.Second

// requestTimeout is policy.request_timeout in effect.
func (p *Policy) requestTimeout() time.Duration {
	if p.RequestTimeout <= 0 {
		return defaultRequestTimeout
	}
	return p.RequestTimeout.D()
}

// ServerConfig is the sidecar's listener.
type ServerConfig struct {
	Listen        string            `yaml:"listen"`
	TLS           TLSConfig         `yaml:"tls"`
	ShutdownGrace pkcs11ha.Duration `yaml:"shutdown_grace"`
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

// LoadConfig reads the sidecar's config file, decodes it strictly, makes pin_file and server.tls paths
// relative to the file's directory and validates it (Validate).
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, err
	}
	cfg.resolvePaths(filepath.Dir(path))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// ParseConfig decodes YAML strictly, with the library's rules (pkcs11ha.DecodeYAML); it does not validate.
func ParseConfig(b []byte) (*Config, error) {
	var cfg Config
	if err := pkcs11ha.DecodeYAML(b, &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *Config) resolvePaths(dir string) {
	c.Topology.ResolvePaths(dir)
	for _, p := range []*string{&c.Server.TLS.Cert, &c.Server.TLS.Key, &c.Server.TLS.ClientCA} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// Library returns the library's part of the config, for pkcs11ha.Open.
func (c *Config) Library() *pkcs11ha.Config {
	return &pkcs11ha.Config{Topology: c.Topology, Policy: c.Policy.Policy}
}

// Validate checks the library's part (pkcs11ha.Config.Validate), the request timeout and the clients
// against the partitions; it changes nothing. The server: section is checked by Listen. Errors are
// *pkcs11ha.ConfigError naming the field.
func (c *Config) Validate() error {
	if err := c.Library().Validate(); err != nil {
		return err
	}
	if c.Policy.RequestTimeout < 0 {
		return &pkcs11ha.ConfigError{Field: "policy.request_timeout", Msg: fmt.Sprintf("must be positive, got %s", c.Policy.RequestTimeout.D())}
	}
	_, err := newAuthTable(c.Clients, c.PartitionNames())
	return err
}
