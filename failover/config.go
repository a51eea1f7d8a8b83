package failover

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
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
	// Inline declares that fn on this member returns when its context ends, or never blocks: a backend
	// that waits on another process under the context (pkcs11ha's process isolation), or a library that
	// computes in this process. Do then runs fn on the caller's goroutine instead of handing it to a
	// worker (the hand-off and its thread wake-ups cost as much as 30 % of an in-process signature on 2
	// cores). A watchdog ends fn's context at the attempt deadline and reports the overrun (breaker,
	// abandoned count), so the hang guarantee holds as long as the declaration does; if fn blocks anyway,
	// only the calls running on it then are caught (Capacity bounds them): while any is abandoned, the
	// member's calls go through workers again. Hedges always run on workers.
	Inline bool
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

// Config configures a Router. Zero fields get DefaultConfig's values, so Config{} is usable; Resolve is the
// one place that applies them and checks the bounds.
type Config struct {
	// AttemptTimeout per tier: [50ms, 250ms]; a tier beyond the slice uses the last entry, a zero entry
	// its tier's default.
	AttemptTimeout []time.Duration
	MaxAttempts    int // per call, including a hedge; default = number of members (each at most once per call)
	// SpillWait is how long a call waits for a slot on a saturated tier before spilling to the next one;
	// default 2 ms, negative = do not wait.
	SpillWait             time.Duration
	MaxAbandonedPerMember int             // default 4; attempts given up on during a stall of this process do not count
	MaxAbandonedTotal     int             // default 64
	EWMADecay             time.Duration   // default 10 s
	InitialLatency        []time.Duration // per tier: [5ms, 100ms]; like AttemptTimeout
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

// ConfigError names a Config field (or a member) that is out of bounds.
type ConfigError struct {
	Field string // "Hedge.Budget", "AttemptTimeout[1]", "members[0].Name"
	Msg   string
}

func (e *ConfigError) Error() string {
	if strings.HasPrefix(e.Field, "members") {
		return "failover: " + e.Field + ": " + e.Msg
	}
	return "failover: Config." + e.Field + ": " + e.Msg
}

func defaulted[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// perTierDefaults fills the zero entries of a per-tier slice (all of it when empty) with the defaults.
func perTierDefaults(s, def []time.Duration) []time.Duration {
	if len(s) == 0 {
		return slices.Clone(def)
	}
	s = slices.Clone(s)
	for i := range s {
		defaulted(&s[i], perTier(def, i))
	}
	return s
}

// Resolve returns c with the defaults in its zero fields (MaxAttempts: the number of members), or every
// field that is out of bounds, each a *ConfigError. It is idempotent: negative SpillWait and
// StallThreshold stay negative (off).
func (c Config) Resolve(members []MemberConfig) (Config, error) {
	d := DefaultConfig()
	c.AttemptTimeout = perTierDefaults(c.AttemptTimeout, d.AttemptTimeout)
	c.InitialLatency = perTierDefaults(c.InitialLatency, d.InitialLatency)
	defaulted(&c.SpillWait, d.SpillWait)
	defaulted(&c.MaxAbandonedPerMember, d.MaxAbandonedPerMember)
	defaulted(&c.MaxAbandonedTotal, d.MaxAbandonedTotal)
	defaulted(&c.MaxAttempts, len(members))
	defaulted(&c.EWMADecay, d.EWMADecay)
	defaulted(&c.StallThreshold, d.StallThreshold)
	b, db := &c.Breaker, d.Breaker
	defaulted(&b.ConsecutiveFailures, db.ConsecutiveFailures)
	defaulted(&b.FailureRatio, db.FailureRatio)
	defaulted(&b.MinRequests, db.MinRequests)
	defaulted(&b.Window, db.Window)
	defaulted(&b.OpenBase, db.OpenBase)
	defaulted(&b.OpenMax, db.OpenMax)
	defaulted(&b.HalfOpenMax, db.HalfOpenMax)
	h, dh := &c.Hedge, d.Hedge
	defaulted(&h.Budget, dh.Budget)
	defaulted(&h.Floor, dh.Floor)
	defaulted(&h.Quantile, dh.Quantile)
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	if c.Rand == nil {
		c.Rand = d.Rand
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c, errors.Join(append(checkMembers(members), c.check()...)...)
}

func checkMembers(members []MemberConfig) (errs []error) {
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if len(members) == 0 || len(members) > MaxMembers {
		bad("members", "need 1 to %d, got %d", MaxMembers, len(members))
	}
	seen := make(map[string]int, len(members))
	for i, m := range members {
		switch j, dup := seen[m.Name]; {
		case m.Name == "":
			bad(fmt.Sprintf("members[%d].Name", i), "empty")
		case dup:
			bad(fmt.Sprintf("members[%d].Name", i), "%q already used by members[%d]", m.Name, j)
		default:
			seen[m.Name] = i
		}
		if m.Tier < 0 {
			bad(fmt.Sprintf("members[%d].Tier", i), "%d is negative", m.Tier)
		}
		if m.Capacity < 0 {
			bad(fmt.Sprintf("members[%d].Capacity", i), "%d is negative", m.Capacity)
		}
	}
	return errs
}

// check returns the bounds a resolved Config breaks.
func (c *Config) check() (errs []error) {
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	for i, t := range c.AttemptTimeout {
		if t <= 0 {
			bad(fmt.Sprintf("AttemptTimeout[%d]", i), "%v is not positive", t)
		}
	}
	for i, t := range c.InitialLatency {
		if t <= 0 {
			bad(fmt.Sprintf("InitialLatency[%d]", i), "%v is not positive", t)
		}
	}
	negative := func(field string, v int64, show any) {
		if v < 0 {
			bad(field, "%v is negative", show)
		}
	}
	negative("MaxAttempts", int64(c.MaxAttempts), c.MaxAttempts)
	negative("MaxAbandonedPerMember", int64(c.MaxAbandonedPerMember), c.MaxAbandonedPerMember)
	negative("MaxAbandonedTotal", int64(c.MaxAbandonedTotal), c.MaxAbandonedTotal)
	negative("EWMADecay", int64(c.EWMADecay), c.EWMADecay)
	b, h := &c.Breaker, &c.Hedge
	if !(b.FailureRatio > 0 && b.FailureRatio <= 1) {
		bad("Breaker.FailureRatio", "%v is not in (0, 1]", b.FailureRatio)
	}
	negative("Breaker.Window", int64(b.Window), b.Window)
	negative("Breaker.OpenBase", int64(b.OpenBase), b.OpenBase)
	if b.OpenMax < b.OpenBase {
		bad("Breaker.OpenMax", "%v is less than OpenBase %v", b.OpenMax, b.OpenBase)
	}
	if !(h.Budget > 0 && h.Budget <= 1) {
		bad("Hedge.Budget", "%v is not in (0, 1]", h.Budget)
	}
	negative("Hedge.Floor", int64(h.Floor), h.Floor)
	if !(h.Quantile > 0 && h.Quantile < 1) {
		bad("Hedge.Quantile", "%v is not in (0, 1)", h.Quantile)
	}
	return errs
}

// perTier returns s[tier], or the last entry for tiers beyond the slice.
func perTier(s []time.Duration, tier int) time.Duration { return s[min(tier, len(s)-1)] }
