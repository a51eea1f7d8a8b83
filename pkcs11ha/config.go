package pkcs11ha

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
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

// Config is the one schema shared by the library and the hsm-ha-proxy sidecar.
type Config struct {
	LocalRegion string            `yaml:"local_region"`
	Devices     []DeviceConfig    `yaml:"devices"`
	Partitions  []PartitionConfig `yaml:"partitions"`
	Policy      Policy            `yaml:"policy"`
	Server      ServerConfig      `yaml:"server"`
	Clients     []ClientConfig    `yaml:"clients"`
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
}

// PartitionConfig is one application's HA group: the same token cloned on every device.
type PartitionConfig struct {
	Name        string `yaml:"name"`
	TokenLabel  string `yaml:"token_label"`
	TokenSerial string `yaml:"token_serial"`
	PIN         string `yaml:"pin"`
	PINEnv      string `yaml:"pin_env"`
	PINFile     string `yaml:"pin_file"`

	secret string // the resolved PIN; never printed
}

// Policy holds every routing knob; zero fields take the defaults of DefaultPolicy.
type Policy struct {
	AttemptTimeout   TierDurations `yaml:"attempt_timeout"`
	OperationTimeout Duration      `yaml:"operation_timeout"`
	MaxAttempts      int           `yaml:"max_attempts"`
	SpillWait        Duration      `yaml:"spill_wait"`
	SessionPoolSize  int           `yaml:"session_pool_size"`
	MaxAbandoned     int           `yaml:"max_abandoned_per_device"`
	MaxAbandonedAll  int           `yaml:"max_abandoned_total"`
	EWMADecay        Duration      `yaml:"ewma_decay"`
	InitialLatency   TierDurations `yaml:"initial_latency"`
	Breaker          BreakerPolicy `yaml:"breaker"`
	Hedge            HedgePolicy   `yaml:"hedge"`
	Health           HealthPolicy  `yaml:"health"`
	HealthKey        string        `yaml:"health_key"`
	ReinitGrace      Duration      `yaml:"reinit_grace"`
	InitTimeout      Duration      `yaml:"init_timeout"`
	CloseTimeout     Duration      `yaml:"close_timeout"`
	MaxRetired       int           `yaml:"max_retired_instances"`
	OAEPFallback     bool          `yaml:"oaep_fallback"`
	RequestTimeout   Duration      `yaml:"request_timeout"`
	// DisablePanic turns off panic mode (one breaker-free attempt when breakers shut out every up device).
	DisablePanic bool `yaml:"disable_panic"`
	// StallThreshold: attempt timeouts spanning a stall of this process longer than this are not counted
	// on breakers; negative turns the watchdog off.
	StallThreshold Duration `yaml:"stall_threshold"`
}

// TierDurations is a duration per tier.
type TierDurations struct {
	Local Duration `yaml:"local"`
	DR    Duration `yaml:"dr"`
}

// BreakerPolicy configures the per-device circuit breakers.
type BreakerPolicy struct {
	ConsecutiveFailures uint32   `yaml:"consecutive_failures"`
	FailureRatio        float64  `yaml:"failure_ratio"`
	MinRequests         uint32   `yaml:"min_requests"`
	Window              Duration `yaml:"window"`
	OpenBase            Duration `yaml:"open_base"`
	OpenMax             Duration `yaml:"open_max"`
	HalfOpenMax         uint32   `yaml:"half_open_max"`
}

// HedgePolicy configures opt-in hedged requests inside the local tier.
type HedgePolicy struct {
	Enabled  bool     `yaml:"enabled"`
	Budget   float64  `yaml:"budget"`
	Floor    Duration `yaml:"floor"`
	Quantile float64  `yaml:"quantile"`
}

// HealthPolicy configures active probes.
type HealthPolicy struct {
	Interval     Duration `yaml:"interval"`
	DownInterval Duration `yaml:"down_interval"`
	Jitter       float64  `yaml:"jitter"`
	Timeout      Duration `yaml:"timeout"`
	Fall         int      `yaml:"fall"`
	Rise         int      `yaml:"rise"`
}

// ServerConfig is the sidecar's listener (ignored by the library).
type ServerConfig struct {
	Listen        string    `yaml:"listen"`
	TLS           TLSConfig `yaml:"tls"`
	ShutdownGrace Duration  `yaml:"shutdown_grace"`
	// PKCS11 is the PKCS#11 front end's socket, unix:///PATH (p11-kit RPC for p11-kit-client.so); empty:
	// off. PKCS11Group (a group name or numeric gid) makes it mode 0660 owned by that group; else 0600.
	PKCS11      string `yaml:"pkcs11"`
	PKCS11Group string `yaml:"pkcs11_group"`
}

// TLSConfig is the sidecar's mutual-TLS material.
type TLSConfig struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
}

// ClientConfig maps a sidecar client identity to the partitions it may use.
type ClientConfig struct {
	Name       string   `yaml:"name"`
	UnixUID    *int     `yaml:"unix_uid"`
	UnixGID    *int     `yaml:"unix_gid"`
	CertName   string   `yaml:"cert_name"` // URI/DNS SAN or CN of the client certificate
	Partitions []string `yaml:"partitions"`
}

// DefaultPolicy returns the defaults (docs/ARCHITECTURE.md, "Routing defaults", says why).
func DefaultPolicy() Policy {
	return Policy{
		AttemptTimeout:   TierDurations{Local: Duration(50 * time.Millisecond), DR: Duration(250 * time.Millisecond)},
		OperationTimeout: Duration(2 * time.Second),
		SpillWait:        Duration(2 * time.Millisecond),
		SessionPoolSize:  16,
		MaxAbandoned:     4,
		MaxAbandonedAll:  64,
		EWMADecay:        Duration(10 * time.Second),
		InitialLatency:   TierDurations{Local: Duration(5 * time.Millisecond), DR: Duration(100 * time.Millisecond)},
		Breaker: BreakerPolicy{
			ConsecutiveFailures: 3, FailureRatio: 0.5, MinRequests: 20,
			Window: Duration(10 * time.Second), OpenBase: Duration(5 * time.Second),
			OpenMax: Duration(5 * time.Minute), HalfOpenMax: 2,
		},
		Hedge: HedgePolicy{Budget: 0.05, Floor: Duration(2 * time.Millisecond), Quantile: 0.95},
		Health: HealthPolicy{
			Interval: Duration(5 * time.Second), DownInterval: Duration(time.Second), Jitter: 0.15,
			Timeout: Duration(time.Second), Fall: 3, Rise: 2,
		},
		ReinitGrace:    Duration(2 * time.Second),
		InitTimeout:    Duration(5 * time.Second),
		CloseTimeout:   Duration(2 * time.Second),
		MaxRetired:     8,
		RequestTimeout: Duration(5 * time.Second),
		StallThreshold: Duration(20 * time.Millisecond),
	}
}

// ConfigError names the field that is wrong, and the device or partition it belongs to.
type ConfigError struct {
	Field string // e.g. "devices[1].module" or "partitions[payments].pin_env"
	Msg   string
}

func (e *ConfigError) Error() string { return "pkcs11ha: config: " + e.Field + ": " + e.Msg }

// LoadConfig reads, strictly decodes and validates a YAML config file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pkcs11ha: config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, err
	}
	if err := cfg.resolveRelative(filepath.Dir(path)); err != nil {
		return nil, err
	}
	return cfg, cfg.Validate()
}

// ParseConfig decodes YAML strictly (unknown keys are errors) and fills policy defaults; it does not
// validate: call Validate.
func ParseConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ConfigError{Field: "(file)", Msg: "empty config"}
		}
		// Name the field: find the key on the line the decoder complains about.
		var root yaml.Node
		if yaml.Unmarshal(b, &root) == nil {
			if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
				line, _ := strconv.Atoi(m[1])
				if f := fieldAtLine(&root, line, ""); f != "" {
					return nil, &ConfigError{Field: f, Msg: err.Error()}
				}
			}
		}
		return nil, fmt.Errorf("pkcs11ha: config: %w", err)
	}
	return &cfg, nil
}

var lineRE = regexp.MustCompile(`line (\d+)`)

// fieldAtLine returns the dotted path ("policy.spill_wait", "devices[0].name") of the key on line.
func fieldAtLine(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if f := fieldAtLine(c, line, path); f != "" {
				return f
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if f := fieldAtLine(v, line, p); f != "" {
				return f
			}
			if k.Line == line {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if f := fieldAtLine(c, line, fmt.Sprintf("%s[%d]", path, i)); f != "" {
				return f
			}
		}
	}
	return ""
}

// resolveRelative makes pin_file and TLS paths relative to the config file's directory.
func (c *Config) resolveRelative(dir string) error {
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range c.Partitions {
		rel(&c.Partitions[i].PINFile)
	}
	rel(&c.Server.TLS.Cert)
	rel(&c.Server.TLS.Key)
	rel(&c.Server.TLS.ClientCA)
	return nil
}

// Validate checks the config, resolves PINs and fills policy defaults. Errors are *ConfigError.
func (c *Config) Validate() error {
	if len(c.Devices) == 0 {
		return &ConfigError{Field: "devices", Msg: "at least one device is required"}
	}
	if len(c.Devices) > 64 {
		return &ConfigError{Field: "devices", Msg: "at most 64 devices are supported"}
	}
	names := map[string]bool{}
	localSeen := false
	for i := range c.Devices {
		d := &c.Devices[i]
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
		if d.Region == c.LocalRegion {
			localSeen = true
		}
	}
	if c.LocalRegion == "" {
		return &ConfigError{Field: "local_region", Msg: "required"}
	}
	if !localSeen {
		return &ConfigError{Field: "local_region", Msg: fmt.Sprintf("%q matches no device's region", c.LocalRegion)}
	}
	if len(c.Partitions) == 0 {
		return &ConfigError{Field: "partitions", Msg: "at least one partition is required"}
	}
	pnames := map[string]bool{}
	for i := range c.Partitions {
		p := &c.Partitions[i]
		if p.Name == "" {
			return &ConfigError{Field: fmt.Sprintf("partitions[%d].name", i), Msg: "required"}
		}
		f := fmt.Sprintf("partitions[%s]", p.Name)
		if pnames[p.Name] {
			return &ConfigError{Field: f + ".name", Msg: "duplicate partition name"}
		}
		pnames[p.Name] = true
		if p.TokenLabel == "" && p.TokenSerial == "" {
			return &ConfigError{Field: f + ".token_label", Msg: "one of token_label or token_serial is required"}
		}
		if err := p.resolvePIN(f); err != nil {
			return err
		}
	}
	for _, d := range c.Devices {
		for sp := range d.TokenSerials {
			if !pnames[sp] {
				return &ConfigError{Field: fmt.Sprintf("devices[%s].token_serials", d.Name), Msg: fmt.Sprintf("unknown partition %q", sp)}
			}
		}
	}
	// Devices sharing a module instance must tell their tokens apart by serial.
	byModule := map[string][]int{}
	for i, d := range c.Devices {
		k, err := newModuleKey(d.Module, d.ModuleEnv)
		if err != nil {
			continue // reported above for missing files
		}
		byModule[k.path+"\x00"+k.env] = append(byModule[k.path+"\x00"+k.env], i)
	}
	for _, idx := range byModule {
		if len(idx) < 2 {
			continue
		}
		for _, i := range idx {
			d := c.Devices[i]
			for _, p := range c.Partitions {
				if d.TokenSerials[p.Name] == "" {
					return &ConfigError{Field: fmt.Sprintf("devices[%s].token_serials", d.Name),
						Msg: fmt.Sprintf("device shares its module instance with %d other device(s): give the serial of partition %q's token on this device", len(idx)-1, p.Name)}
				}
			}
		}
	}
	if err := c.Server.validatePKCS11(); err != nil {
		return err
	}
	for i, cl := range c.Clients {
		f := fmt.Sprintf("clients[%d]", i)
		if cl.Name != "" {
			f = fmt.Sprintf("clients[%s]", cl.Name)
		}
		if cl.UnixUID == nil && cl.UnixGID == nil && cl.CertName == "" {
			return &ConfigError{Field: f, Msg: "needs unix_uid, unix_gid or cert_name"}
		}
		for _, pn := range cl.Partitions {
			if !pnames[pn] {
				return &ConfigError{Field: f + ".partitions", Msg: fmt.Sprintf("unknown partition %q", pn)}
			}
		}
	}
	return c.Policy.fill()
}

// validatePKCS11 checks server.pkcs11 and server.pkcs11_group (the PKCS#11 front end's socket).
func (s *ServerConfig) validatePKCS11() error {
	if s.PKCS11 == "" {
		if s.PKCS11Group != "" {
			return &ConfigError{Field: "server.pkcs11_group", Msg: "only used with server.pkcs11"}
		}
		return nil
	}
	path, ok := strings.CutPrefix(s.PKCS11, "unix://")
	if !ok || !strings.HasPrefix(path, "/") {
		return &ConfigError{Field: "server.pkcs11", Msg: fmt.Sprintf("%q: want unix:///PATH (an absolute socket path)", s.PKCS11)}
	}
	listen := s.Listen
	if listen == "" {
		listen = "unix:///run/hsm-ha-proxy.sock" // the HTTP API's default
	}
	if listen == s.PKCS11 {
		return &ConfigError{Field: "server.pkcs11", Msg: "must differ from server.listen"}
	}
	return nil
}

func (p *PartitionConfig) resolvePIN(f string) error {
	n := 0
	for _, s := range []string{p.PIN, p.PINEnv, p.PINFile} {
		if s != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return &ConfigError{Field: f + ".pin_env", Msg: "no PIN source: set one of pin_env, pin_file or pin"}
	case n > 1:
		return &ConfigError{Field: f + ".pin_env", Msg: "more than one PIN source: set only one of pin_env, pin_file or pin"}
	}
	switch {
	case p.PIN != "":
		p.secret = p.PIN
	case p.PINEnv != "":
		v, ok := os.LookupEnv(p.PINEnv)
		if !ok || v == "" {
			return &ConfigError{Field: f + ".pin_env", Msg: fmt.Sprintf("environment variable %s is not set", p.PINEnv)}
		}
		p.secret = v
	default:
		b, err := os.ReadFile(p.PINFile)
		if err != nil {
			return &ConfigError{Field: f + ".pin_file", Msg: fmt.Sprintf("cannot read %q: %v", p.PINFile, errors.Unwrap(err))}
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return &ConfigError{Field: f + ".pin_file", Msg: fmt.Sprintf("%q is empty", p.PINFile)}
		}
		p.secret = v
	}
	return nil
}

// fill applies defaults to zero fields and rejects negative or zero-by-mistake values.
func (p *Policy) fill() error {
	def := DefaultPolicy()
	durs := []struct {
		name string
		v    *Duration
		def  Duration
	}{
		{"attempt_timeout.local", &p.AttemptTimeout.Local, def.AttemptTimeout.Local},
		{"attempt_timeout.dr", &p.AttemptTimeout.DR, def.AttemptTimeout.DR},
		{"operation_timeout", &p.OperationTimeout, def.OperationTimeout},
		{"spill_wait", &p.SpillWait, def.SpillWait},
		{"ewma_decay", &p.EWMADecay, def.EWMADecay},
		{"initial_latency.local", &p.InitialLatency.Local, def.InitialLatency.Local},
		{"initial_latency.dr", &p.InitialLatency.DR, def.InitialLatency.DR},
		{"breaker.window", &p.Breaker.Window, def.Breaker.Window},
		{"breaker.open_base", &p.Breaker.OpenBase, def.Breaker.OpenBase},
		{"breaker.open_max", &p.Breaker.OpenMax, def.Breaker.OpenMax},
		{"hedge.floor", &p.Hedge.Floor, def.Hedge.Floor},
		{"health.interval", &p.Health.Interval, def.Health.Interval},
		{"health.down_interval", &p.Health.DownInterval, def.Health.DownInterval},
		{"health.timeout", &p.Health.Timeout, def.Health.Timeout},
		{"reinit_grace", &p.ReinitGrace, def.ReinitGrace},
		{"init_timeout", &p.InitTimeout, def.InitTimeout},
		{"close_timeout", &p.CloseTimeout, def.CloseTimeout},
		{"request_timeout", &p.RequestTimeout, def.RequestTimeout},
	}
	if p.StallThreshold == 0 {
		p.StallThreshold = def.StallThreshold
	}
	for _, d := range durs {
		if *d.v < 0 {
			return &ConfigError{Field: "policy." + d.name, Msg: fmt.Sprintf("must be positive, got %s", d.v.D())}
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"max_attempts", &p.MaxAttempts, def.MaxAttempts},
		{"session_pool_size", &p.SessionPoolSize, def.SessionPoolSize},
		{"max_abandoned_per_device", &p.MaxAbandoned, def.MaxAbandoned},
		{"max_abandoned_total", &p.MaxAbandonedAll, def.MaxAbandonedAll},
		{"health.fall", &p.Health.Fall, def.Health.Fall},
		{"health.rise", &p.Health.Rise, def.Health.Rise},
		{"max_retired_instances", &p.MaxRetired, def.MaxRetired},
	}
	for _, d := range ints {
		if *d.v < 0 {
			return &ConfigError{Field: "policy." + d.name, Msg: fmt.Sprintf("must not be negative, got %d", *d.v)}
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if p.Breaker.ConsecutiveFailures == 0 {
		p.Breaker.ConsecutiveFailures = def.Breaker.ConsecutiveFailures
	}
	if p.Breaker.MinRequests == 0 {
		p.Breaker.MinRequests = def.Breaker.MinRequests
	}
	if p.Breaker.HalfOpenMax == 0 {
		p.Breaker.HalfOpenMax = def.Breaker.HalfOpenMax
	}
	ratios := []struct {
		name string
		v    *float64
		def  float64
	}{
		{"breaker.failure_ratio", &p.Breaker.FailureRatio, def.Breaker.FailureRatio},
		{"hedge.budget", &p.Hedge.Budget, def.Hedge.Budget},
		{"hedge.quantile", &p.Hedge.Quantile, def.Hedge.Quantile},
		{"health.jitter", &p.Health.Jitter, def.Health.Jitter},
	}
	for _, r := range ratios {
		if *r.v < 0 || *r.v > 1 {
			return &ConfigError{Field: "policy." + r.name, Msg: fmt.Sprintf("must be between 0 and 1, got %g", *r.v)}
		}
		if *r.v == 0 {
			*r.v = r.def
		}
	}
	if p.Breaker.OpenMax < p.Breaker.OpenBase {
		return &ConfigError{Field: "policy.breaker.open_max", Msg: "must not be shorter than breaker.open_base"}
	}
	return nil
}

// tierOf returns the routing tier of device i.
func (c *Config) tierOf(i int) int {
	d := c.Devices[i]
	if d.Tier != nil {
		return *d.Tier
	}
	if d.Region == c.LocalRegion {
		return 0
	}
	return 1
}

// PartitionNames lists the configured partitions, sorted.
func (c *Config) PartitionNames() []string {
	out := make([]string, 0, len(c.Partitions))
	for _, p := range c.Partitions {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}
