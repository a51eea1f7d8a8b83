package health

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// PeakEWMA is the Finagle/linkerd peak-EWMA latency estimate: a slower observation replaces the estimate
// at once (so a device that turns slow loses traffic immediately), a faster one only pulls it down
// gradually with weight exp(-elapsed/decay) (so one lucky fast reply does not attract a flood).
//
// A timeout is not a measurement: Penalize raises the estimate to it, and fast replies after it work it
// off with a shorter decay, Decay/10 for a first stall, four times longer for each stall that follows the
// previous one within 3 × Decay, up to Decay itself. A device back from a half-second stall regains its
// share within seconds of its next probes; one that keeps stalling stays out longer each time
// (docs/ARCHITECTURE.md, "Routing defaults", stall recovery).
//
// Value is read on every routing decision, so it is a single atomic load; writers serialise on a mutex.
type PeakEWMA struct {
	cost  atomic.Int64 // nanoseconds; the only field readers touch
	clock Clock
	decay float64 // nanoseconds

	mu    sync.Mutex
	stamp time.Time // time of the last update, for the decay weight
	// penalized: the estimate is (still mostly) a penalty, not a measurement. stalling: no sample since
	// the last penalty (a further penalty belongs to the same stall).
	penalized, stalling bool
	// strikes counts the penalty episodes in a row, each begun within forgiveAfter of the previous one's
	// last penalty; lastPenalty is the time of the latest penalty (zero: never).
	strikes     int
	lastPenalty time.Time
}

// Penalty recovery: the first stall is worked off with Decay/recoveryDivisor, each repeat with
// recoveryGrowth times the previous decay (capped at Decay); forgiven after forgiveDecays × Decay.
const (
	recoveryDivisor = 10
	recoveryGrowth  = 4
	forgiveDecays   = 3
	// caughtUp: the penalty is worked off once the estimate is within this factor of a fast sample.
	caughtUp = 2
)

// DefaultEWMADecay is used when NewPeakEWMA is given a non-positive decay.
const DefaultEWMADecay = 10 * time.Second

// NewPeakEWMA returns an estimate starting at initial. A nil clock means RealClock; a non-positive decay
// means DefaultEWMADecay.
func NewPeakEWMA(clock Clock, decay, initial time.Duration) *PeakEWMA {
	if clock == nil {
		clock = RealClock()
	}
	if decay <= 0 {
		decay = DefaultEWMADecay
	}
	p := &PeakEWMA{clock: clock, decay: float64(decay), stamp: clock.Now()}
	p.cost.Store(int64(max(initial, 0)))
	return p
}

// Observe folds one round-trip time into the estimate.
func (p *PeakEWMA) Observe(rtt time.Duration) {
	rtt = max(rtt, 0)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	elapsed := max(now.Sub(p.stamp), 0)
	p.stamp = now
	p.stalling = false
	cur := time.Duration(p.cost.Load())
	if rtt > cur {
		p.cost.Store(int64(rtt))
		p.penalized = false // a real peak now
		return
	}
	decay := p.decay
	if p.penalized {
		decay = p.recoveryDecay()
	}
	w := math.Exp(-float64(elapsed) / decay)
	next := time.Duration(float64(cur)*w + float64(rtt)*(1-w))
	p.cost.Store(int64(next))
	if p.penalized && next <= caughtUp*rtt {
		p.penalized = false
	}
}

// Penalize records that a call did not answer within d (an attempt timeout): the estimate becomes at
// least d, and fast samples work it off as the type's comment says. Penalties with no sample between them
// are one stall, however many calls timed out in it.
func (p *PeakEWMA) Penalize(d time.Duration) {
	d = max(d, 0)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	if !p.stalling {
		if p.lastPenalty.IsZero() || now.Sub(p.lastPenalty) > time.Duration(forgiveDecays*p.decay) {
			p.strikes = 0
		}
		p.strikes++
		p.penalized, p.stalling = true, true
	}
	p.lastPenalty, p.stamp = now, now
	if cur := time.Duration(p.cost.Load()); d > cur {
		p.cost.Store(int64(d))
	}
}

// recoveryDecay is the decay that works off the current penalty. p.mu must be held.
func (p *PeakEWMA) recoveryDecay() float64 {
	return min(p.decay/recoveryDivisor*math.Pow(recoveryGrowth, float64(p.strikes-1)), p.decay)
}

// Value returns the current estimate. Lock-free and allocation-free.
func (p *PeakEWMA) Value() time.Duration { return time.Duration(p.cost.Load()) }

// Reset forgets the history, e.g. after the device was re-initialised and its latency is unknown again:
// its stalls too (a device that keeps going down is kept out by its breaker's backoff, not by this).
func (p *PeakEWMA) Reset(initial time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stamp = p.clock.Now()
	p.penalized, p.stalling = false, false
	p.strikes, p.lastPenalty = 0, time.Time{}
	p.cost.Store(int64(max(initial, 0)))
}
