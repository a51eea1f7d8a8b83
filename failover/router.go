package failover

import (
	"context"
	"fmt"
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

// tokenUnit is one hedge token; the bucket is kept in millionths so adding Budget is integer-atomic.
const (
	tokenUnit = 1_000_000
	tokenCap  = 10 * tokenUnit
)

type member struct {
	// Hot counters, written by every attempt; padded away from the read-mostly fields below.
	_         [64]byte
	inFlight  atomic.Int32 // attempts whose fn has not returned, abandoned ones included (they hold a session)
	abandoned atomic.Int32 // attempts given up on whose fn has not returned yet
	gate      atomic.Int64 // Router.mono() value until which the breaker keeps the member out; 0 = none
	_         [64]byte

	idx      int
	name     string
	tier     int
	capacity int32
	timeout  time.Duration
	initial  time.Duration // the tier's InitialLatency
	upFlag   atomic.Bool   // for Status; routing reads the view
	ewma     *health.PeakEWMA
	hist     *health.LatencyHistogram
	breaker  *gobreaker.TwoStepCircuitBreaker[struct{}]
	// brState is the breaker's state as of its last change. gobreaker's own State() would move an expired
	// open breaker to half-open: reading status must not change routing.
	brState atomic.Int32

	// Backoff bookkeeping, only touched from onBreakerChange, which gobreaker calls under its own lock.
	offenses int
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

	work chan func() // unbuffered: a send succeeds only when an idle worker takes it

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
		work:       make(chan func()),
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

// workerIdle is how long an idle attempt worker waits for work before it exits.
const workerIdle = 10 * time.Second

// spawn runs f on an idle attempt worker, or on a new one. Attempts run off the caller's goroutine so a
// call stuck in cgo never holds the caller; reusing workers keeps their grown stacks (a fresh goroutine
// per attempt grew its stack again on every call: ~8 µs of an in-process signature). A worker stuck in a
// hung call is simply not idle: new work gets a new worker.
func (r *Router) spawn(f func()) {
	select {
	case r.work <- f:
	default:
		go r.worker(f)
	}
}

func (r *Router) worker(f func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f()
		f = nil
		idle.Reset(workerIdle)
		select {
		case f = <-r.work:
		case <-idle.C:
			return
		case <-r.closeCh:
			return
		}
	}
}

// stallTick is how often the stall watchdog wakes up.
const stallTick = 5 * time.Millisecond

// watchStalls notices when this process stood still: a host hiccup or a long pause makes every attempt in
// flight miss its deadline at once, and counting those on the breakers would eject healthy devices (all of
// a tier at once) and send traffic to DR. A ticker that wakes up more than threshold late marks a stall.
func (r *Router) watchStalls(threshold time.Duration) {
	t := time.NewTicker(stallTick)
	defer t.Stop()
	prev := r.mono()
	for {
		select {
		case <-t.C:
		case <-r.closeCh:
			return
		}
		now := r.mono()
		if time.Duration(now-prev) > stallTick+threshold {
			r.lastStall.Store(now)
		}
		prev = now
	}
}

// stalledSince reports whether a stall ended after start (a mono() time), or is going on now (the
// watchdog has not run for longer than the threshold: it would mark the stall when it next wakes up).
func (r *Router) stalledSince(start int64) bool {
	if r.cfg.StallThreshold <= 0 {
		return false
	}
	return r.lastStall.Load() >= start
}

// mono is real monotonic time since the Router was made, in ns, never 0 (0 means "no gate").
func (r *Router) mono() int64 { return int64(time.Since(r.epoch)) + 1 }

// SetUp feeds health: an up member may be picked, a down one never is.
func (r *Router) SetUp(member int, up bool) {
	m := r.members[member]
	r.mu.Lock()
	changed := m.upFlag.Swap(up) != up
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

// Latency is the member's latency tracker; pkcs11ha feeds probe latencies into it too.
func (r *Router) Latency(member int) *health.PeakEWMA { return r.members[member].ewma }

// ResetLatency forgets what was measured on member (a re-initialised or recovered device is a new one):
// its latency is its tier's InitialLatency again.
func (r *Router) ResetLatency(member int) {
	m := r.members[member]
	m.ewma.Reset(m.initial)
}

// Pick is the routing decision alone: the lowest tier with an eligible member in mask and not in tried,
// then power-of-two-choices on cost = peak-EWMA × (in-flight + 1) (with two candidates, both compared;
// ties broken at random). Eligible = up, breaker not open (and past its backoff), in-flight < Capacity,
// abandoned < MaxAbandonedPerMember and total abandoned < MaxAbandonedTotal. Lock-free, no allocation.
func (r *Router) Pick(mask, tried Mask) (member int, ok bool) {
	member, ok, _ = r.pick(mask, tried, false, false)
	return member, ok
}

// pick is Pick with two knobs for Do: tier0Only (hedges never leave tier 0) and stopAtSaturated (stop at
// the first tier whose only obstacle is capacity, instead of spilling, so Do can wait for a slot).
// saturated reports that some tier was skipped only for capacity.
func (r *Router) pick(mask, tried Mask, tier0Only, stopAtSaturated bool) (member int, ok, saturated bool) {
	if r.abandonedTotal.Load() >= r.maxAbTotal {
		return -1, false, false
	}
	allowed := mask &^ tried
	v := r.view.Load()
	now := int64(0) // read the clock only if some breaker gate needs it
	for ti := range v.tiers {
		tv := &v.tiers[ti]
		if tier0Only && tv.tier != 0 {
			break
		}
		if tv.mask&allowed == 0 {
			continue
		}
		var cand [MaxMembers]uint8
		n, full := 0, false
		for _, i := range tv.members {
			if allowed&(1<<i) == 0 {
				continue
			}
			m := r.members[i]
			if g := m.gate.Load(); g != 0 {
				if now == 0 {
					now = r.mono()
				}
				if now < g {
					continue
				}
			}
			if m.abandoned.Load() >= r.maxAbPer {
				continue
			}
			if m.capacity > 0 && m.inFlight.Load() >= m.capacity {
				full = true
				continue
			}
			cand[n] = i
			n++
		}
		switch {
		case n == 1:
			return int(cand[0]), true, saturated
		case n > 1:
			return r.p2c(&cand, n), true, saturated
		case full:
			saturated = true
			if stopAtSaturated {
				return -1, false, true
			}
		}
	}
	return -1, false, saturated
}

// pickPanic picks, in the lowest tier that has one, the cheapest member that health says is up, ignoring
// breakers and their backoff; abandoned-call caps and capacity still apply. -1 if there is none.
func (r *Router) pickPanic(mask, ran Mask) int {
	if r.abandonedTotal.Load() >= r.maxAbTotal {
		return -1
	}
	allowed := mask &^ ran
	v := r.view.Load()
	for ti := range v.tiers {
		tv := &v.tiers[ti]
		best, bestCost := -1, 0.0
		for _, i := range tv.members {
			m := r.members[i]
			if allowed&(1<<i) == 0 || m.abandoned.Load() >= r.maxAbPer || (m.capacity > 0 && m.inFlight.Load() >= m.capacity) {
				continue
			}
			if c := r.cost(i); best < 0 || c < bestCost {
				best, bestCost = int(i), c
			}
		}
		if best >= 0 {
			return best
		}
	}
	return -1
}

func (r *Router) randN(n int) int { return min(int(r.rand()*float64(n)), n-1) }

func (r *Router) p2c(cand *[MaxMembers]uint8, n int) int {
	a, b := cand[0], cand[1]
	if n > 2 {
		i := r.randN(n)
		j := r.randN(n - 1)
		if j >= i {
			j++
		}
		a, b = cand[i], cand[j]
	}
	ca, cb := r.cost(a), r.cost(b)
	switch {
	case ca < cb:
		return int(a)
	case cb < ca:
		return int(b)
	case r.rand() < 0.5: // equal cost (e.g. two idle members, same initial latency): spread the load
		return int(a)
	default:
		return int(b)
	}
}

func (r *Router) cost(i uint8) float64 {
	m := r.members[i]
	return float64(m.ewma.Value()) * float64(m.inFlight.Load()+1)
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

func (r *Router) addTokens() {
	for {
		cur := r.tokens.Load()
		next := min(cur+r.budget, tokenCap)
		if next == cur || r.tokens.CompareAndSwap(cur, next) {
			return
		}
	}
}

func (r *Router) takeToken() bool {
	for {
		cur := r.tokens.Load()
		if cur < tokenUnit {
			return false
		}
		if r.tokens.CompareAndSwap(cur, cur-tokenUnit) {
			return true
		}
	}
}

func (r *Router) refundToken() { r.tokens.Add(tokenUnit) }

// MemberStatus is one member's routing state.
type MemberStatus struct {
	Name      string
	Tier      int
	Up        bool
	Breaker   string    // "closed" | "half-open" | "open"
	OpenUntil time.Time // zero unless open
	EWMA      time.Duration
	InFlight  int
	Abandoned int
}

// Status returns every member's state, in member order.
func (r *Router) Status() []MemberStatus {
	out := make([]MemberStatus, len(r.members))
	now := r.mono()
	for i, m := range r.members {
		st := gobreaker.State(m.brState.Load())
		s := MemberStatus{
			Name:      m.name,
			Tier:      m.tier,
			Up:        m.upFlag.Load(),
			Breaker:   st.String(),
			EWMA:      m.ewma.Value(),
			InFlight:  int(m.inFlight.Load()),
			Abandoned: int(m.abandoned.Load()),
		}
		// What routing sees is what counts: our backoff (the gate) outlasts gobreaker's own open timeout,
		// and once it has passed, the next call the member gets is a half-open trial.
		if g := m.gate.Load(); g != 0 {
			switch {
			case now < g:
				s.Breaker = gobreaker.StateOpen.String()
				s.OpenUntil = r.epoch.Add(time.Duration(g - 1))
			case st == gobreaker.StateOpen:
				s.Breaker = gobreaker.StateHalfOpen.String()
			}
		}
		out[i] = s
	}
	return out
}

// Abandoned returns the number of abandoned attempts (given up on, fn not yet returned) over all members.
func (r *Router) Abandoned() (total int) { return int(r.abandonedTotal.Load()) }

// InFlight returns the number of attempts running on member, abandoned ones included.
func (r *Router) InFlight(member int) int { return int(r.members[member].inFlight.Load()) }

// WaitIdle waits until no attempt (abandoned ones included) runs on member, e.g. before re-initialising
// its module. It returns ctx's error if ctx ends first.
func (r *Router) WaitIdle(ctx context.Context, member int) error {
	if member < 0 || member >= len(r.members) {
		return fmt.Errorf("failover: WaitIdle: no member %d", member)
	}
	m := r.members[member]
	for {
		r.waiters.Add(1)
		ch := *r.slotCh.Load()
		if m.inFlight.Load() == 0 {
			r.waiters.Add(-1)
			return nil
		}
		select {
		case <-ch:
			r.waiters.Add(-1)
		case <-ctx.Done():
			r.waiters.Add(-1)
			return ctx.Err()
		}
	}
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
