package failover

import (
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// pickWait picks a member, waiting up to SpillWait for a slot on a saturated tier before spilling to the
// next one, and for as long as the caller allows when every tier is saturated. -1 means none eligible.
func (c *call[T]) pickWait() (int, error) {
	r := c.r
	var spill health.Timer
	defer func() {
		if spill != nil {
			spill.Stop()
		}
	}()
	waitForSpill := r.cfg.SpillWait > 0
	for {
		mi, ok, saturated := r.pick(c.mask, c.tried, false, waitForSpill)
		if ok || !saturated {
			return mi, nil
		}
		r.waiters.Add(1)
		slot := *r.slotCh.Load()
		// Re-check after registering, or a release in between would be missed.
		mi, ok, saturated = r.pick(c.mask, c.tried, false, waitForSpill)
		if ok || !saturated {
			r.waiters.Add(-1)
			return mi, nil
		}
		var spillC <-chan time.Time
		if waitForSpill {
			if spill == nil {
				spill = r.clock.NewTimer(r.cfg.SpillWait)
			}
			spillC = spill.C()
		}
		select {
		case <-slot:
		case <-spillC:
			spill, waitForSpill = nil, false
		case <-c.ctx.Done():
			r.waiters.Add(-1)
			return -1, c.ctx.Err()
		case <-r.closeCh:
			r.waiters.Add(-1)
			return -1, &NoMemberError{Tried: c.out.Attempts, Last: ErrClosed}
		}
		r.waiters.Add(-1)
	}
}
