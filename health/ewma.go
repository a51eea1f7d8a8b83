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
// Value is read on every routing decision, so it is a single atomic load; writers serialise on a mutex.
type PeakEWMA struct {
	cost  atomic.Int64 // nanoseconds; the only field readers touch
	clock Clock
	decay float64 // nanoseconds

	mu    sync.Mutex
	stamp time.Time // time of the last update, for the decay weight
}

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
	cur := time.Duration(p.cost.Load())
	if rtt > cur {
		p.cost.Store(int64(rtt))
		return
	}
	w := math.Exp(-float64(elapsed) / p.decay)
	p.cost.Store(int64(float64(cur)*w + float64(rtt)*(1-w)))
}

// Value returns the current estimate. Lock-free and allocation-free.
func (p *PeakEWMA) Value() time.Duration { return time.Duration(p.cost.Load()) }

// Reset forgets the history, e.g. after the device was re-initialised and its latency is unknown again.
func (p *PeakEWMA) Reset(initial time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stamp = p.clock.Now()
	p.cost.Store(int64(max(initial, 0)))
}
