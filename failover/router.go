package failover

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Mask is a set of members: bit i = member i may serve this call (the key exists and matches there).
type Mask uint64

// AllMembers lets every member serve.
const AllMembers Mask = ^Mask(0)

// histWindow is the decay window of the per-member latency histograms that set hedge delays.
const histWindow = 10 * time.Second

type member struct {
	// Hot counters, written by every attempt; padded away from the read-mostly fields below.
	_         [64]byte
	inFlight  atomic.Int32 // attempts whose fn has not returned, abandoned ones included (they hold a session)
	abandoned atomic.Int32 // attempts given up on whose fn has not returned yet
	// hung: the abandoned attempts that count against MaxAbandonedPerMember, i.e. all but those given up on
	// during a stall of this process (class Stalled), which say nothing about the member.
	hung    atomic.Int32
	gate    atomic.Int64 // Router.mono() value until which the breaker keeps the member out; 0 = none
	tripNow atomic.Bool  // the failure being reported trips the breaker whatever the counts (breaker.go)
	// falls counts the member's falls (health down, breaker open): an attempt that saw one while it ran is
	// no longer anyone's last resort (attempt.checkpoint).
	falls atomic.Uint32
	_     [64]byte

	idx      int
	name     string
	tier     int
	capacity int32
	inline   bool // MemberConfig.Inline
	timeout  time.Duration
	initial  time.Duration // the tier's InitialLatency
	upFlag   atomic.Bool   // for Status; routing reads the view
	ewma     *health.PeakEWMA
	hist     *health.LatencyHistogram
	breaker  *gobreaker.TwoStepCircuitBreaker[struct{}]
	// brState is the breaker's state as of its last change. gobreaker's own State() would move an expired
	// open breaker to half-open: reading status must not change routing.
	brState atomic.Int32

	// Backoff bookkeeping, only written from onBreakerChange, which gobreaker calls under its own lock.
	offenses atomic.Int32 // breaker trips that count towards the backoff (read by Status)
	closedAt int64
	openFor  atomic.Int64 // the last open period, for Status and tests
}

// tierView is the eligible-by-health part of one tier. It is immutable once published.
type tierView struct {
	tier    int
	mask    Mask
	members []uint8
}

// view is what Pick reads: tiers in ascending order, each listing its members that health says are up.
// Rebuilt (never mutated) on every health change and swapped atomically, so readers need no lock.
type view struct{ tiers []tierView }

// Router routes operations over a fixed set of members. Safe for concurrent use.
type Router struct {
	cfg          Config
	clock        health.Clock
	rand         func() float64
	obs          Observer
	members      []*member
	maxAbPer     int32
	maxAbTotal   int32
	budget       int64 // hedge tokens added per call, in tokenUnit
	forgiveAfter time.Duration
	epoch        time.Time // real-clock origin of mono(), for breaker gates

	view           atomic.Pointer[view]
	brEvents       breakerEvents
	abandonedTotal atomic.Int32
	tokens         atomic.Int64

	// Waiting for a slot: waiters registers interest, slotCh is closed (and replaced) on every release
	// while anyone waits, so the release path costs one atomic load when nobody does.
	waiters atomic.Int32
	slotCh  atomic.Pointer[chan struct{}]

	// lastStall is the mono() time at which the stall watchdog last woke up late (0 = never).
	lastStall atomic.Int64

	work chan task // unbuffered: a send succeeds only when an idle worker takes it

	mu        sync.Mutex // serialises view rebuilds
	closed    atomic.Bool
	closeCh   chan struct{}
	closeOnce sync.Once
}

// New builds a Router. Every member starts up (health not yet known is treated as up; feed SetUp) with
// a closed breaker and its tier's InitialLatency. Validation errors name the field.
func New(cfg Config, members []MemberConfig) (*Router, error) {
	cfg, err := cfg.Resolve(members)
	if err != nil {
		return nil, err
	}
	r := &Router{
		cfg:        cfg,
		clock:      cfg.Clock,
		rand:       cfg.Rand,
		obs:        cfg.Observer,
		maxAbPer:   int32(min(cfg.MaxAbandonedPerMember, math.MaxInt32)),
		maxAbTotal: int32(min(cfg.MaxAbandonedTotal, math.MaxInt32)),
		budget:     int64(cfg.Hedge.Budget * tokenUnit),
		epoch:      time.Now(),
		closeCh:    make(chan struct{}),
		work:       make(chan task),
	}
	r.forgiveAfter = min(cfg.Breaker.OpenMax, 10*cfg.Breaker.Window)
	ch := make(chan struct{})
	r.slotCh.Store(&ch)
	for i, mc := range members {
		m := &member{
			idx:      i,
			name:     mc.Name,
			tier:     mc.Tier,
			capacity: int32(min(mc.Capacity, math.MaxInt32)),
			inline:   mc.Inline,
			timeout:  perTier(cfg.AttemptTimeout, mc.Tier),
			initial:  perTier(cfg.InitialLatency, mc.Tier),
			hist:     health.NewLatencyHistogram(cfg.Clock, histWindow),
			closedAt: r.mono(),
		}
		m.ewma = health.NewPeakEWMA(cfg.Clock, cfg.EWMADecay, m.initial)
		m.upFlag.Store(true)
		m.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](r.breakerSettings(i, mc.Name))
		r.members = append(r.members, m)
	}
	r.rebuild()
	if cfg.StallThreshold > 0 {
		go r.watchStalls(cfg.StallThreshold)
	}
	return r, nil
}

// mono is real monotonic time since the Router was made, in ns, never 0 (0 means "no gate").
func (r *Router) mono() int64 { return int64(time.Since(r.epoch)) + 1 }

// SetUp feeds health: an up member may be picked, a down one never is.
func (r *Router) SetUp(member int, up bool) {
	m := r.members[member]
	r.mu.Lock()
	changed := m.upFlag.Swap(up) != up
	if changed && !up {
		m.falls.Add(1)
	}
	if changed {
		r.rebuildLocked()
	}
	r.mu.Unlock()
	if changed {
		r.notify() // callers waiting for a slot re-pick
	}
}

func (r *Router) rebuild() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rebuildLocked()
}

func (r *Router) rebuildLocked() {
	var tiers []int
	for _, m := range r.members {
		if m.upFlag.Load() && !slices.Contains(tiers, m.tier) {
			tiers = append(tiers, m.tier)
		}
	}
	slices.Sort(tiers)
	v := &view{tiers: make([]tierView, len(tiers))}
	for ti, t := range tiers {
		tv := &v.tiers[ti]
		tv.tier = t
		for _, m := range r.members {
			if m.tier == t && m.upFlag.Load() {
				tv.members = append(tv.members, uint8(m.idx))
				tv.mask |= 1 << m.idx
			}
		}
	}
	r.view.Store(v)
}

// Latency is the member's latency tracker.
func (r *Router) Latency(member int) *health.PeakEWMA { return r.members[member].ewma }

// ObserveProbe folds a health probe's round trip into the member's latency estimate. A probe slower than
// the member's attempt timeout spanned a stall of the device (a paused server): an attempt would have
// timed out, so it is the same penalty (health.PeakEWMA.Penalize), which the next fast probes work off,
// not a peak that keeps the device out for several decays.
func (r *Router) ObserveProbe(member int, rtt time.Duration) {
	m := r.members[member]
	if rtt > m.timeout {
		m.ewma.Penalize(m.timeout)
		return
	}
	m.ewma.Observe(rtt)
}

// ResetLatency forgets what was measured on member (a re-initialised or recovered device is a new one):
// its latency is its tier's InitialLatency again.
func (r *Router) ResetLatency(member int) {
	m := r.members[member]
	m.ewma.Reset(m.initial)
}

// acquire takes a slot on m, failing if it filled up since Pick looked.
func (r *Router) acquire(m *member) bool {
	if m.capacity <= 0 {
		m.inFlight.Add(1)
		return true
	}
	for {
		n := m.inFlight.Load()
		if n >= m.capacity {
			return false
		}
		if m.inFlight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (r *Router) release(m *member) {
	m.inFlight.Add(-1)
	r.notify()
}

// notify wakes everyone waiting for a slot (or for a member to go idle). The atomics are sequentially
// consistent: a waiter registers, then re-checks; a releaser decrements, then looks for waiters; so one of
// them always sees the other.
func (r *Router) notify() {
	if r.waiters.Load() == 0 {
		return
	}
	next := make(chan struct{})
	close(*r.slotCh.Swap(&next))
}

// Close stops the Router's internal goroutines (the watchers of hedge losers) and makes later calls to Do
// fail with ErrClosed. It does not wait for abandoned attempts; their outcome is still reported when
// their fn returns.
func (r *Router) Close() {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		close(r.closeCh)
	})
}
