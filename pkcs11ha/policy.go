package pkcs11ha

import (
	"errors"
	"fmt"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// Policy holds every routing knob: the policy: section of the config. Each field is documented here, once;
// docs/configuration.md's policy table is generated from these comments and the defaults in effect
// (TestPolicyTable). A zero field takes the default of the layer that uses it: the router's (package
// failover's DefaultConfig), the health probes' (package health) or the library's own (defaultOwn), and
// Cluster.Config shows the values a cluster runs with.
type Policy struct {
	// AttemptTimeout is the deadline of one attempt on a device, per tier, never past the caller's: past it
	// the call moves on to the next device and the attempt is abandoned (it keeps running in the module).
	AttemptTimeout TierDurations `yaml:"attempt_timeout"`
	// OperationTimeout is the deadline of Sign and Decrypt calls made without a context.
	OperationTimeout Duration `yaml:"operation_timeout"`
	// MaxAttempts is how many attempts one operation may make: each device at most once, except a second
	// try in its tier after a stall of this process.
	MaxAttempts int `yaml:"max_attempts"`
	// SpillWait is how long a call waits for a busy local device before spilling to DR; negative (e.g.
	// "-1ms") never waits.
	SpillWait Duration `yaml:"spill_wait"`
	// SessionPoolSize is the number of sessions per (device, partition), capped by the token's maximum
	// session count; one is opened at start.
	SessionPoolSize int `yaml:"session_pool_size"`
	// MaxAbandoned is how many calls past their deadline may still run in a device's current module
	// instance; past it the device counts as down. Calls stuck in a retired instance no longer count (see
	// MaxStuckCalls).
	MaxAbandoned int `yaml:"max_abandoned_per_device"`
	// MaxAbandonedAll is the same cap over all devices.
	MaxAbandonedAll int `yaml:"max_abandoned_total"`
	// EWMADecay is the decay time of the peak-EWMA latency estimate that routing inside a tier follows.
	EWMADecay Duration `yaml:"ewma_decay"`
	// InitialLatency is the latency assumed for a device not yet measured, per tier.
	InitialLatency TierDurations `yaml:"initial_latency"`
	// Breaker configures the per-device circuit breakers (sony/gobreaker v2).
	Breaker BreakerPolicy `yaml:"breaker"`
	// Hedge configures opt-in hedged requests inside the local tier.
	Hedge HedgePolicy `yaml:"hedge"`
	// Health configures the active probes of each device.
	Health HealthPolicy `yaml:"health"`
	// HealthKey is the label of a key each probe signs with, in addition to C_GetTokenInfo; empty: none.
	HealthKey string `yaml:"health_key"`
	// ReinitGrace is how long recovery waits for the calls in flight on a module instance before it retires
	// the instance and loads a fresh one.
	ReinitGrace Duration `yaml:"reinit_grace"`
	// InitTimeout is the deadline for loading and initialising a module (a paused server blocks
	// C_Initialize).
	InitTimeout Duration `yaml:"init_timeout"`
	// CloseTimeout bounds Cluster.Close.
	CloseTimeout Duration `yaml:"close_timeout"`
	// MaxRetired is how many module instances a device may retire with calls still stuck in them before it
	// stays down (an instance whose stuck calls all return stops counting); 0: no cap of its own,
	// MaxStuckCalls bounds them.
	MaxRetired int `yaml:"max_retired_instances"`
	// OAEPFallback: when the token lacks native OAEP for a hash, decrypt with raw RSA on the token and decode
	// OAEP in Go (constant time).
	OAEPFallback bool `yaml:"oaep_fallback"`
	// GCMFallback: when a device (or its transport: p11-kit 0.24's RPC) refuses CKM_AES_GCM, AES-GCM is
	// computed in Go from AES-ECB blocks the token encrypts (docs/ARCHITECTURE.md, "Secret keys").
	GCMFallback bool `yaml:"gcm_fallback"`
	// CBCFallback: when a device (or its transport: p11-kit 0.24's RPC) refuses CKM_AES_CBC_PAD, AES-CBC-PAD
	// is computed in Go from AES-ECB on the token: one call to decrypt, one call per block to encrypt
	// (docs/ARCHITECTURE.md, "Secret keys").
	CBCFallback bool `yaml:"cbc_fallback"`
	// DisablePanic turns off panic mode (one breaker-free attempt when breakers shut out every device that
	// health calls up).
	DisablePanic bool `yaml:"disable_panic"`
	// StallThreshold: attempt timeouts that span a stall of this process longer than this are retried
	// (first in the same tier) but not counted on breakers; negative turns the watchdog off.
	StallThreshold Duration `yaml:"stall_threshold"`
	// MaxStuckCalls caps the calls stuck in retired module instances, process-wide (each holds an OS
	// thread; Go stops at 10,000): past it no more instances are retired, and their devices stay down,
	// saying why.
	MaxStuckCalls int `yaml:"max_stuck_calls"`
	// P11KitInstances is how many instances of p11-kit-client.so each device using it gets: one that
	// carries any number of calls and the others one call at a time (several calls on one instance can be
	// stranded when its server dies). Opt-in: see docs/failures.md.
	P11KitInstances int `yaml:"p11kit_client_instances"`
	// VerifySignatures checks each signature with the key's public key before returning it: "rsa" (RSA
	// PKCS#1 v1.5 and PSS), "all" (also ECDSA and Ed25519) or "off".
	VerifySignatures string `yaml:"verify_signatures"`
	// Isolation: "none" (the library's default) loads every device's PKCS#11 module in this process;
	// "process" (the sidecar's default) loads each in a worker process of its own
	// (internal/devicebackend/worker.go), so that a crash or hang inside a vendor's module never takes this
	// process down. Process isolation re-executes this program's binary (or WithWorkerCommand's): main must
	// call MaybeRunWorker first.
	Isolation string `yaml:"isolation"`
	// AdminTimeout bounds one key-management call on one device (generating an RSA-4096 key takes
	// seconds on some HSMs).
	AdminTimeout Duration `yaml:"admin_timeout"`
	// KeySyncInterval is how often a running cluster brings every device's keys and tombstones up to date
	// (keysync.go); negative (e.g. "-1s") never.
	KeySyncInterval Duration `yaml:"key_sync_interval"`
}

// TierDurations is a duration per tier.
type TierDurations struct {
	// Local is for tier-0 devices (local_region, unless a device's tier says otherwise).
	Local Duration `yaml:"local"`
	// DR is for tier-1 devices (the disaster-recovery region).
	DR Duration `yaml:"dr"`
}

// BreakerPolicy configures the per-device circuit breakers. Caller errors, refused decrypts and PIN errors
// never count.
type BreakerPolicy struct {
	// ConsecutiveFailures trips the breaker after this many failures in a row.
	ConsecutiveFailures uint32 `yaml:"consecutive_failures"`
	// FailureRatio trips it when at least this share of the calls in the window failed (with MinRequests).
	FailureRatio float64 `yaml:"failure_ratio"`
	// MinRequests is how many calls the window must hold before FailureRatio applies.
	MinRequests uint32 `yaml:"min_requests"`
	// Window is the rolling window FailureRatio is counted over.
	Window Duration `yaml:"window"`
	// OpenBase is how long a tripped breaker stays open the first time.
	OpenBase Duration `yaml:"open_base"`
	// OpenMax caps the open time, which doubles with ±20 % jitter for repeat offenders.
	OpenMax Duration `yaml:"open_max"`
	// HalfOpenMax is how many trial calls a half-open breaker admits; that many successes close it.
	HalfOpenMax uint32 `yaml:"half_open_max"`
}

// HedgePolicy configures opt-in hedged requests inside the local tier: one backup attempt on another tier-0
// device, never into DR.
type HedgePolicy struct {
	// Enabled turns hedging on: a call still unanswered after Quantile of recent latency gets one backup
	// attempt on another tier-0 device.
	Enabled bool `yaml:"enabled"`
	// Budget is the extra load hedges may add, as a fraction of calls (a token bucket).
	Budget float64 `yaml:"budget"`
	// Floor is the earliest a hedge starts.
	Floor Duration `yaml:"floor"`
	// Quantile is the quantile of recent latency after which the backup starts, taken on the fastest tier-0
	// device that may serve the call.
	Quantile float64 `yaml:"quantile"`
}

// HealthPolicy configures active probes.
type HealthPolicy struct {
	// Interval is the time between probes of a device that is up or degraded.
	Interval Duration `yaml:"interval"`
	// DownInterval is the time between probes of a device that is down.
	DownInterval Duration `yaml:"down_interval"`
	// Jitter is the ± fraction applied to every probe wait, at most 1; negative (e.g. -1) means none.
	Jitter float64 `yaml:"jitter"`
	// Timeout is the deadline of one probe.
	Timeout Duration `yaml:"timeout"`
	// Fall is how many failed probes in a row mark a device down.
	Fall int `yaml:"fall"`
	// Rise is how many successful probes in a row mark a down device up.
	Rise int `yaml:"rise"`
}

// ownSettings are the settings that neither the router nor the monitors read.
type ownSettings struct {
	OperationTimeout time.Duration
	SessionPoolSize  int
	HealthKey        string
	ReinitGrace      time.Duration
	InitTimeout      time.Duration
	CloseTimeout     time.Duration
	MaxRetired       int // 0: no cap of its own (MaxStuckCalls bounds what retired instances hold)
	OAEPFallback     bool
	GCMFallback      bool
	CBCFallback      bool
	MaxStuckCalls    int
	P11KitInstances  int
	VerifySignatures string
	Isolation        string
	AdminTimeout     time.Duration
	KeySyncInterval  time.Duration // < 0: no background sync
}

// defaultOwn holds the library's own defaults (the router's and the probes' are in their packages).
var defaultOwn = ownSettings{
	OperationTimeout: 2 * time.Second,
	SessionPoolSize:  16,
	ReinitGrace:      2 * time.Second,
	InitTimeout:      5 * time.Second,
	CloseTimeout:     2 * time.Second,
	MaxRetired:       0,    // no cap of its own: max_stuck_calls bounds what retired instances hold
	MaxStuckCalls:    1000, // Go stops the process at 10,000 threads
	P11KitInstances:  1,    // internal/devicebackend/lanes.go: opt-in
	VerifySignatures: VerifyRSA,
	Isolation:        IsolationNone,
	AdminTimeout:     30 * time.Second,
	KeySyncInterval:  15 * time.Second,
}

// Values of policy.isolation.
const (
	IsolationNone    = "none"
	IsolationProcess = "process"
)

// ownFieldError names an ownSettings field that is out of bounds.
type ownFieldError struct{ field, msg string }

func (e *ownFieldError) Error() string { return e.field + ": " + e.msg }

// resolve fills the zero fields with defaultOwn's and checks the bounds, as failover.Config.Resolve and
// health.MonitorConfig.Resolve do for theirs.
func (o ownSettings) resolve() (ownSettings, error) {
	var errs []error
	durations := []struct {
		field  string
		v, def *time.Duration
	}{
		{"OperationTimeout", &o.OperationTimeout, &defaultOwn.OperationTimeout},
		{"ReinitGrace", &o.ReinitGrace, &defaultOwn.ReinitGrace},
		{"InitTimeout", &o.InitTimeout, &defaultOwn.InitTimeout},
		{"CloseTimeout", &o.CloseTimeout, &defaultOwn.CloseTimeout},
		{"AdminTimeout", &o.AdminTimeout, &defaultOwn.AdminTimeout},
	}
	for _, d := range durations {
		switch {
		case *d.v < 0:
			errs = append(errs, &ownFieldError{d.field, fmt.Sprintf("must be positive, got %v", *d.v)})
		case *d.v == 0:
			*d.v = *d.def
		}
	}
	counts := []struct {
		field  string
		v, def *int
	}{
		{"SessionPoolSize", &o.SessionPoolSize, &defaultOwn.SessionPoolSize},
		{"MaxRetired", &o.MaxRetired, &defaultOwn.MaxRetired},
		{"MaxStuckCalls", &o.MaxStuckCalls, &defaultOwn.MaxStuckCalls},
		{"P11KitInstances", &o.P11KitInstances, &defaultOwn.P11KitInstances},
	}
	for _, c := range counts {
		switch {
		case *c.v < 0:
			errs = append(errs, &ownFieldError{c.field, fmt.Sprintf("must not be negative, got %d", *c.v)})
		case *c.v == 0:
			*c.v = *c.def
		}
	}
	if o.KeySyncInterval == 0 {
		o.KeySyncInterval = defaultOwn.KeySyncInterval
	}
	switch o.VerifySignatures {
	case "":
		o.VerifySignatures = defaultOwn.VerifySignatures
	case VerifyRSA, VerifyAll, VerifyOff:
	default:
		errs = append(errs, &ownFieldError{"VerifySignatures", fmt.Sprintf("want rsa, all or off, got %q", o.VerifySignatures)})
	}
	switch o.Isolation {
	case "":
		o.Isolation = defaultOwn.Isolation
	case IsolationNone, IsolationProcess:
	default:
		errs = append(errs, &ownFieldError{"Isolation", fmt.Sprintf("want none or process, got %q", o.Isolation)})
	}
	return o, errors.Join(errs...)
}

// Where a policy key goes.
const (
	toRouter  = iota // failover.Config
	toMonitor        // health.MonitorConfig
	toOwn            // ownSettings
)

// binding ties one policy key to the field it sets.
type binding struct {
	key    string // under policy:, e.g. "breaker.window"
	target int
	field  string // as the target's errors name it, e.g. "Breaker.Window"
	down   func() // policy -> target
	up     func() // target -> policy
}

func bind[T any](key string, target int, field string, p, t *T) binding {
	return binding{key: key, target: target, field: field, down: func() { *t = *p }, up: func() { *p = *t }}
}

// bindTier binds a per-tier router slice entry; the slice is read through its field, which Resolve replaces.
func bindTier(key, field string, p *Duration, s *[]time.Duration, i int) binding {
	return binding{key: key, target: toRouter, field: field,
		down: func() { (*s)[i] = p.D() }, up: func() { *p = Duration((*s)[i]) }}
}

func dur(d *Duration) *time.Duration { return (*time.Duration)(d) }

// bindings is the one map of the policy: each key, and the router's, monitors' or library's field it
// sets. compile builds those configs with it, reads the values in effect back through it, and names the
// key of a bound that one of them refused.
func bindings(p *Policy, r *failover.Config, h *health.MonitorConfig, o *ownSettings) []binding {
	r.AttemptTimeout, r.InitialLatency = make([]time.Duration, 2), make([]time.Duration, 2)
	b, hp := &p.Breaker, &p.Hedge
	return []binding{
		bindTier("attempt_timeout.local", "AttemptTimeout[0]", &p.AttemptTimeout.Local, &r.AttemptTimeout, 0),
		bindTier("attempt_timeout.dr", "AttemptTimeout[1]", &p.AttemptTimeout.DR, &r.AttemptTimeout, 1),
		bind("operation_timeout", toOwn, "OperationTimeout", dur(&p.OperationTimeout), &o.OperationTimeout),
		bind("max_attempts", toRouter, "MaxAttempts", &p.MaxAttempts, &r.MaxAttempts),
		bind("spill_wait", toRouter, "SpillWait", dur(&p.SpillWait), &r.SpillWait),
		bind("session_pool_size", toOwn, "SessionPoolSize", &p.SessionPoolSize, &o.SessionPoolSize),
		bind("max_abandoned_per_device", toRouter, "MaxAbandonedPerMember", &p.MaxAbandoned, &r.MaxAbandonedPerMember),
		bind("max_abandoned_total", toRouter, "MaxAbandonedTotal", &p.MaxAbandonedAll, &r.MaxAbandonedTotal),
		bind("ewma_decay", toRouter, "EWMADecay", dur(&p.EWMADecay), &r.EWMADecay),
		bindTier("initial_latency.local", "InitialLatency[0]", &p.InitialLatency.Local, &r.InitialLatency, 0),
		bindTier("initial_latency.dr", "InitialLatency[1]", &p.InitialLatency.DR, &r.InitialLatency, 1),
		bind("breaker.consecutive_failures", toRouter, "Breaker.ConsecutiveFailures", &b.ConsecutiveFailures, &r.Breaker.ConsecutiveFailures),
		bind("breaker.failure_ratio", toRouter, "Breaker.FailureRatio", &b.FailureRatio, &r.Breaker.FailureRatio),
		bind("breaker.min_requests", toRouter, "Breaker.MinRequests", &b.MinRequests, &r.Breaker.MinRequests),
		bind("breaker.window", toRouter, "Breaker.Window", dur(&b.Window), &r.Breaker.Window),
		bind("breaker.open_base", toRouter, "Breaker.OpenBase", dur(&b.OpenBase), &r.Breaker.OpenBase),
		bind("breaker.open_max", toRouter, "Breaker.OpenMax", dur(&b.OpenMax), &r.Breaker.OpenMax),
		bind("breaker.half_open_max", toRouter, "Breaker.HalfOpenMax", &b.HalfOpenMax, &r.Breaker.HalfOpenMax),
		bind("hedge.enabled", toRouter, "Hedge.Enabled", &hp.Enabled, &r.Hedge.Enabled),
		bind("hedge.budget", toRouter, "Hedge.Budget", &hp.Budget, &r.Hedge.Budget),
		bind("hedge.floor", toRouter, "Hedge.Floor", dur(&hp.Floor), &r.Hedge.Floor),
		bind("hedge.quantile", toRouter, "Hedge.Quantile", &hp.Quantile, &r.Hedge.Quantile),
		bind("health.interval", toMonitor, "Interval", dur(&p.Health.Interval), &h.Interval),
		bind("health.down_interval", toMonitor, "DownInterval", dur(&p.Health.DownInterval), &h.DownInterval),
		bind("health.jitter", toMonitor, "Jitter", &p.Health.Jitter, &h.Jitter),
		bind("health.timeout", toMonitor, "Timeout", dur(&p.Health.Timeout), &h.Timeout),
		bind("health.fall", toMonitor, "FallThreshold", &p.Health.Fall, &h.FallThreshold),
		bind("health.rise", toMonitor, "RiseThreshold", &p.Health.Rise, &h.RiseThreshold),
		bind("health_key", toOwn, "HealthKey", &p.HealthKey, &o.HealthKey),
		bind("reinit_grace", toOwn, "ReinitGrace", dur(&p.ReinitGrace), &o.ReinitGrace),
		bind("init_timeout", toOwn, "InitTimeout", dur(&p.InitTimeout), &o.InitTimeout),
		bind("close_timeout", toOwn, "CloseTimeout", dur(&p.CloseTimeout), &o.CloseTimeout),
		bind("max_retired_instances", toOwn, "MaxRetired", &p.MaxRetired, &o.MaxRetired),
		bind("oaep_fallback", toOwn, "OAEPFallback", &p.OAEPFallback, &o.OAEPFallback),
		bind("gcm_fallback", toOwn, "GCMFallback", &p.GCMFallback, &o.GCMFallback),
		bind("cbc_fallback", toOwn, "CBCFallback", &p.CBCFallback, &o.CBCFallback),
		bind("max_stuck_calls", toOwn, "MaxStuckCalls", &p.MaxStuckCalls, &o.MaxStuckCalls),
		bind("p11kit_client_instances", toOwn, "P11KitInstances", &p.P11KitInstances, &o.P11KitInstances),
		bind("verify_signatures", toOwn, "VerifySignatures", &p.VerifySignatures, &o.VerifySignatures),
		bind("isolation", toOwn, "Isolation", &p.Isolation, &o.Isolation),
		bind("admin_timeout", toOwn, "AdminTimeout", dur(&p.AdminTimeout), &o.AdminTimeout),
		bind("key_sync_interval", toOwn, "KeySyncInterval", dur(&p.KeySyncInterval), &o.KeySyncInterval),
		bind("disable_panic", toRouter, "DisablePanic", &p.DisablePanic, &r.DisablePanic),
		bind("stall_threshold", toRouter, "StallThreshold", dur(&p.StallThreshold), &r.StallThreshold),
	}
}

// settings is what a cluster runs on, built once by compile and never changed: its own copy of the
// config (with the policy in effect), the PINs, and the settings of the router, the monitors and the
// library itself.
type settings struct {
	cfg     Config
	pins    []string // per partition
	members []failover.MemberConfig
	router  failover.Config
	monitor health.MonitorConfig // each device's monitor adds its name, initial state and callback
	own     ownSettings
	// workerCmd starts a device worker (policy.isolation process): this program's binary unless
	// WithWorkerCommand gave another.
	workerCmd []string
}

// compile checks c and builds the settings from a copy of it; c is not changed.
func compile(c *Config) (*settings, error) {
	s := &settings{cfg: c.clone()}
	pins, err := s.cfg.check()
	if err != nil {
		return nil, err
	}
	s.pins = pins
	bs := bindings(&s.cfg.Policy, &s.router, &s.monitor, &s.own)
	for _, b := range bs {
		b.down()
	}
	own, err := s.own.resolve()
	errs := policyErrors(err, bs, toOwn)
	for i, d := range s.cfg.Devices {
		// A device serves every partition from one pool each: that many attempts at once, no more.
		// Inline (no hand-off to an attempt worker) where the backend cannot hold the caller past its
		// deadline: a device worker's calls return when their context ends; a module the operator declared
		// non-blocking computes in this process (docs/ARCHITECTURE.md, "One call, end to end").
		inline := own.Isolation == IsolationProcess || d.NonBlocking
		s.members = append(s.members, failover.MemberConfig{Name: d.Name, Tier: s.cfg.tierOf(i),
			Capacity: own.SessionPoolSize * len(s.cfg.Partitions), Inline: inline})
	}
	router, err := s.router.Resolve(s.members)
	errs = append(errs, policyErrors(err, bs, toRouter)...)
	monitor, err := s.monitor.Resolve()
	errs = append(errs, policyErrors(err, bs, toMonitor)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.own, s.router, s.monitor = own, router, monitor
	for _, b := range bs {
		b.up() // the policy in effect, for Cluster.Config
	}
	return s, nil
}

// policyErrors names the policy key of each bound that target's settings refused.
func policyErrors(err error, bs []binding, target int) []error {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		field, msg := "", e.Error()
		var fe *failover.ConfigError
		var he *health.ConfigError
		var oe *ownFieldError
		switch {
		case errors.As(e, &fe):
			field, msg = fe.Field, fe.Msg
		case errors.As(e, &he):
			field, msg = he.Field, he.Msg
		case errors.As(e, &oe):
			field, msg = oe.field, oe.msg
		}
		key := "policy"
		for _, b := range bs {
			if b.target == target && b.field == field {
				key = "policy." + b.key
			}
		}
		out = append(out, &ConfigError{Field: key, Msg: msg})
	}
	return out
}

// backend is what the device backend needs of s (internal/devicebackend/device_settings.go).
func (s *settings) backend() *devicebackend.Settings {
	b := &devicebackend.Settings{PINs: s.pins, Own: devicebackend.Options{
		SessionPoolSize: s.own.SessionPoolSize, ReinitGrace: s.own.ReinitGrace, InitTimeout: s.own.InitTimeout,
		CloseTimeout: s.own.CloseTimeout, MaxRetired: s.own.MaxRetired, MaxStuckCalls: s.own.MaxStuckCalls,
		P11KitInstances: s.own.P11KitInstances, OperationTimeout: s.own.OperationTimeout, AdminTimeout: s.own.AdminTimeout,
	}, WorkerCmd: s.workerCmd}
	for _, d := range s.cfg.Devices {
		b.Devices = append(b.Devices, devicebackend.DeviceSpec{Name: d.Name, Module: d.Module, ModuleEnv: d.ModuleEnv, TokenSerials: d.TokenSerials})
	}
	for _, p := range s.cfg.Partitions {
		b.Partitions = append(b.Partitions, devicebackend.PartitionSpec{Name: p.Name, TokenLabel: p.TokenLabel, TokenSerial: p.TokenSerial})
	}
	return b
}
