// Package fakeclock is a manually driven health.Clock for deterministic tests of code that waits on
// timers: tests move time with Advance or Set, and use BlockUntil to wait until the code under test
// has armed the timers it is expected to sleep on.
package fakeclock

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Clock is a fake health.Clock. The zero value is not usable; call New.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*timer // pending (armed, not fired, not stopped)
	seq     uint64   // creation order, so timers due at the same instant fire in creation order
	waiters []waiter
}

type waiter struct {
	n  int
	ch chan struct{}
}

type timer struct {
	clock *Clock
	ch    chan time.Time // nil for AfterFunc
	f     func()         // AfterFunc's
	when  time.Time
	seq   uint64
}

var _ health.Clock = (*Clock)(nil)

// New returns a fake clock reading start.
func New(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer arms a timer that fires when the fake time reaches Now()+d. A timer with d <= 0 fires at
// once (like time.NewTimer) and is never pending.
func (c *Clock) NewTimer(d time.Duration) health.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{clock: c, ch: make(chan time.Time, 1), when: c.now.Add(d), seq: c.seq}
	if d <= 0 {
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	c.notifyLocked()
	return t
}

// AfterFunc arms a timer that calls f in its own goroutine when the fake time reaches Now()+d (at once
// for d <= 0). Its C is nil.
func (c *Clock) AfterFunc(d time.Duration, f func()) health.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{clock: c, f: f, when: c.now.Add(d), seq: c.seq}
	if d <= 0 {
		go f()
		return t
	}
	c.timers = append(c.timers, t)
	c.notifyLocked()
	return t
}

// Advance moves the fake time forward by d and fires every timer that is then due, in order.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.now.Add(d))
}

// Set moves the fake time to t (backwards too) and fires every timer that is then due, in order.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(t)
}

// Pending returns the number of armed timers.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// BlockUntil waits until exactly n timers are pending. It is how a test knows that the goroutine
// under test has reached the point where it sleeps on the clock.
func (c *Clock) BlockUntil(n int) { _ = c.BlockUntilContext(context.Background(), n) }

// BlockUntilContext is BlockUntil with a way out, so a broken test fails instead of hanging.
func (c *Clock) BlockUntilContext(ctx context.Context, n int) error {
	c.mu.Lock()
	if len(c.timers) == n {
		c.mu.Unlock()
		return nil
	}
	w := waiter{n: n, ch: make(chan struct{})}
	c.waiters = append(c.waiters, w)
	c.mu.Unlock()
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		for i := range c.waiters {
			if c.waiters[i].ch == w.ch {
				c.waiters = slices.Delete(c.waiters, i, i+1)
				break
			}
		}
		c.mu.Unlock()
		return ctx.Err()
	}
}

func (c *Clock) setLocked(t time.Time) {
	c.now = t
	var due []*timer
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if !tm.when.After(t) {
			due = append(due, tm)
		} else {
			kept = append(kept, tm)
		}
	}
	clear(c.timers[len(kept):])
	c.timers = kept
	sort.Slice(due, func(i, j int) bool {
		if !due[i].when.Equal(due[j].when) {
			return due[i].when.Before(due[j].when)
		}
		return due[i].seq < due[j].seq
	})
	for _, tm := range due {
		if tm.f != nil {
			go tm.f()
			continue
		}
		// The channel has room for one value and a pending timer has never sent: this cannot block.
		tm.ch <- tm.when
	}
	if len(due) > 0 {
		c.notifyLocked()
	}
}

func (c *Clock) notifyLocked() {
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if len(c.timers) == w.n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	clear(c.waiters[len(kept):])
	c.waiters = kept
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, tm := range c.timers {
		if tm == t {
			c.timers = slices.Delete(c.timers, i, i+1)
			c.notifyLocked()
			return true
		}
	}
	return false
}
