package failover

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// MaxMembers is the most members a Router takes (a Mask has 64 bits).
const MaxMembers = 64

// MemberConfig describes one device.
type MemberConfig struct {
	Name     string
	Tier     int // 0 local, 1 DR (more tiers allowed, tried in order)
	Capacity int // max concurrent attempts (= the device's session pool size); 0 = unlimited
}

// BreakerConfig configures the per-member circuit breakers.
type BreakerConfig struct {
	ConsecutiveFailures uint32        // trip after this many failures in a row; default 3
	FailureRatio        float64       // or this failure ratio ...; default 0.5
	MinRequests         uint32        // ... over at least this many completed requests in the window; default 20
	Window              time.Duration // rolling window (gobreaker Interval, BucketPeriod = Window/10); default 10 s
	OpenBase            time.Duration // first open period; default 5 s
	// OpenMax caps the open period; default 5 min. Repeat offenders (re-opened from half-open, or
	// re-tripped soon after closing) double it each time with ±20 % jitter. A breaker that stays closed
	// for min(OpenMax, 10 × Window) is forgiven and starts again from OpenBase.
	OpenMax     time.Duration
	HalfOpenMax uint32 // trial requests admitted while half-open; that many successes close it; default 2
}

// HedgeConfig configures hedged requests.
type HedgeConfig struct {
	Enabled bool          // off by default
	Budget  float64       // extra attempts as a fraction of calls (token bucket, cap 10 tokens); default 0.05
	Floor   time.Duration // never hedge earlier than this; default 2 ms
	// Quantile of recent latency after which the backup starts, taken on the fastest tier-0 member that
	// may serve the call (the primary included); default 0.95. No hedge until one of them has enough
	// samples (health.MinQuantileSamples).
	Quantile float64
}

// Config configures a Router. Zero fields get DefaultConfig's values, so Config{} is usable.
type Config struct {
	AttemptTimeout []time.Duration // per tier: [50ms, 250ms]; a tier beyond the slice uses the last entry
	MaxAttempts    int             // per call, including a hedge; default = number of members (each at most once per call)
	// SpillWait is how long a call waits for a slot on a saturated tier before spilling to the next one;
	// default 2 ms, negative = do not wait.
	SpillWait             time.Duration
	MaxAbandonedPerMember int             // default 4
	MaxAbandonedTotal     int             // default 64
	EWMADecay             time.Duration   // default 10 s
	InitialLatency        []time.Duration // per tier: [5ms, 100ms]; a tier beyond the slice uses the last entry
	Breaker               BreakerConfig
	Hedge                 HedgeConfig
	Clock                 health.Clock   // default health.RealClock(); breakers always use the real clock
	Rand                  func() float64 // in [0, 1), safe for concurrent use; default math/rand/v2.Float64
	Observer              Observer       // may be nil
	// DisablePanic turns off panic mode: by default, when breakers shut out every member health calls up,
	// a call still makes one breaker-free attempt per member rather than failing at once.
	DisablePanic bool
	// StallThreshold: a stall watchdog (real time) marks this process as stalled when it wakes up more than
	// this late; attempt timeouts that span a stall are retried but not counted on breakers. Default
	// 20 ms; negative turns the watchdog off.
	StallThreshold time.Duration
}

// DefaultConfig returns the routing defaults (docs/ARCHITECTURE.md, "Routing defaults", says why).
func DefaultConfig() Config {
	return Config{
		AttemptTimeout:        []time.Duration{50 * time.Millisecond, 250 * time.Millisecond},
		SpillWait:             2 * time.Millisecond,
		MaxAbandonedPerMember: 4,
		MaxAbandonedTotal:     64,
		EWMADecay:             10 * time.Second,
		StallThreshold:        20 * time.Millisecond,
		InitialLatency:        []time.Duration{5 * time.Millisecond, 100 * time.Millisecond},
		Breaker: BreakerConfig{
			ConsecutiveFailures: 3,
			FailureRatio:        0.5,
			MinRequests:         20,
			Window:              10 * time.Second,
			OpenBase:            5 * time.Second,
			OpenMax:             5 * time.Minute,
			HalfOpenMax:         2,
		},
		Hedge: HedgeConfig{
			Budget:   0.05,
			Floor:    2 * time.Millisecond,
			Quantile: 0.95,
		},
		Clock: health.RealClock(),
		Rand:  rand.Float64,
	}
}

func defaulted[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// normalize fills zero fields with defaults and validates the result; errors name the field.
func normalize(cfg Config, members []MemberConfig) (Config, error) {
	d := DefaultConfig()
	if len(cfg.AttemptTimeout) == 0 {
		cfg.AttemptTimeout = d.AttemptTimeout
	}
	if len(cfg.InitialLatency) == 0 {
		cfg.InitialLatency = d.InitialLatency
	}
	defaulted(&cfg.SpillWait, d.SpillWait)
	cfg.SpillWait = max(cfg.SpillWait, 0)
	defaulted(&cfg.MaxAbandonedPerMember, d.MaxAbandonedPerMember)
	defaulted(&cfg.MaxAbandonedTotal, d.MaxAbandonedTotal)
	defaulted(&cfg.MaxAttempts, len(members))
	defaulted(&cfg.EWMADecay, d.EWMADecay)
	defaulted(&cfg.StallThreshold, d.StallThreshold)
	b, db := &cfg.Breaker, d.Breaker
	defaulted(&b.ConsecutiveFailures, db.ConsecutiveFailures)
	defaulted(&b.FailureRatio, db.FailureRatio)
	defaulted(&b.MinRequests, db.MinRequests)
	defaulted(&b.Window, db.Window)
	defaulted(&b.OpenBase, db.OpenBase)
	defaulted(&b.OpenMax, db.OpenMax)
	defaulted(&b.HalfOpenMax, db.HalfOpenMax)
	h, dh := &cfg.Hedge, d.Hedge
	defaulted(&h.Budget, dh.Budget)
	defaulted(&h.Floor, dh.Floor)
	defaulted(&h.Quantile, dh.Quantile)
	if cfg.Clock == nil {
		cfg.Clock = d.Clock
	}
	if cfg.Rand == nil {
		cfg.Rand = d.Rand
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}

	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("failover: "+format, args...)) }
	if len(members) == 0 || len(members) > MaxMembers {
		bad("members: need 1 to %d, got %d", MaxMembers, len(members))
	}
	seen := make(map[string]int, len(members))
	for i, m := range members {
		switch j, dup := seen[m.Name]; {
		case m.Name == "":
			bad("members[%d].Name: empty", i)
		case dup:
			bad("members[%d].Name: %q already used by members[%d]", i, m.Name, j)
		default:
			seen[m.Name] = i
		}
		if m.Tier < 0 {
			bad("members[%d].Tier: %d is negative", i, m.Tier)
		}
		if m.Capacity < 0 {
			bad("members[%d].Capacity: %d is negative", i, m.Capacity)
		}
	}
	for i, t := range cfg.AttemptTimeout {
		if t <= 0 {
			bad("Config.AttemptTimeout[%d]: %v is not positive", i, t)
		}
	}
	for i, t := range cfg.InitialLatency {
		if t <= 0 {
			bad("Config.InitialLatency[%d]: %v is not positive", i, t)
		}
	}
	if cfg.MaxAttempts < 0 {
		bad("Config.MaxAttempts: %d is negative", cfg.MaxAttempts)
	}
	if cfg.MaxAbandonedPerMember < 0 {
		bad("Config.MaxAbandonedPerMember: %d is negative", cfg.MaxAbandonedPerMember)
	}
	if cfg.MaxAbandonedTotal < 0 {
		bad("Config.MaxAbandonedTotal: %d is negative", cfg.MaxAbandonedTotal)
	}
	if cfg.EWMADecay < 0 {
		bad("Config.EWMADecay: %v is negative", cfg.EWMADecay)
	}
	if !(b.FailureRatio > 0 && b.FailureRatio <= 1) {
		bad("Config.Breaker.FailureRatio: %v is not in (0, 1]", b.FailureRatio)
	}
	if b.Window < 0 {
		bad("Config.Breaker.Window: %v is negative", b.Window)
	}
	if b.OpenBase < 0 {
		bad("Config.Breaker.OpenBase: %v is negative", b.OpenBase)
	}
	if b.OpenMax < b.OpenBase {
		bad("Config.Breaker.OpenMax: %v is less than OpenBase %v", b.OpenMax, b.OpenBase)
	}
	if !(h.Budget > 0 && h.Budget <= 1) {
		bad("Config.Hedge.Budget: %v is not in (0, 1]", h.Budget)
	}
	if h.Floor < 0 {
		bad("Config.Hedge.Floor: %v is negative", h.Floor)
	}
	if !(h.Quantile > 0 && h.Quantile < 1) {
		bad("Config.Hedge.Quantile: %v is not in (0, 1)", h.Quantile)
	}
	return cfg, errors.Join(errs...)
}

// perTier returns s[tier], or the last entry for tiers beyond the slice.
func perTier(s []time.Duration, tier int) time.Duration { return s[min(tier, len(s)-1)] }
