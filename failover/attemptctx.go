package failover

import (
	"context"
	"errors"
	"sync"
	"time"
)

// attemptContext is the context fn receives: the caller's values, the attempt deadline, and a Done that
// the attempt's side closes (at the attempt deadline, when the caller leaves, or when fn has returned).
// It is not registered with the caller's context (context.WithCancelCause was: two allocations and a
// lock on the caller's context per attempt): while Do waits, Do itself passes the caller's cancellation
// on (callerGone); an attempt still running when Do returns registers then (watchCaller). Its Done
// channel is only made if fn asks for it.
type attemptContext struct {
	parent   context.Context
	deadline time.Time
	owner    Attempt // for AttemptOf
	// follow: nobody passes the caller's cancellation on (an inline attempt: the caller runs fn), so Err
	// reports the caller's, and Done registers for it when it is made.
	follow bool

	mu   sync.Mutex
	done chan struct{}
	err  error
	stop func() bool // ends the registration (watchCaller)
}

func (c *attemptContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *attemptContext) Value(key any) any { return c.parent.Value(key) }

func (c *attemptContext) Done() <-chan struct{} {
	c.mu.Lock()
	if c.done != nil {
		defer c.mu.Unlock()
		return c.done
	}
	c.done = make(chan struct{})
	if c.err != nil {
		close(c.done)
	}
	done, follow := c.done, c.follow && c.err == nil
	c.mu.Unlock()
	if follow {
		c.watchCaller()
	}
	return done
}

func (c *attemptContext) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err == nil && c.follow {
		return c.parent.Err()
	}
	return err
}

// watchCaller passes the caller's cancellation on from now until the context ends.
func (c *attemptContext) watchCaller() {
	stop := context.AfterFunc(c.parent, func() { c.cancel(context.Cause(c.parent)) })
	c.mu.Lock()
	ended := c.err != nil
	if !ended {
		c.stop = stop
	}
	c.mu.Unlock()
	if ended {
		stop()
	}
}

// cancel ends the context: DeadlineExceeded when cause is a deadline (ours or the caller's), Canceled
// otherwise. Only the first call counts.
func (c *attemptContext) cancel(cause error) {
	err := context.Canceled
	if errors.Is(cause, context.DeadlineExceeded) {
		err = context.DeadlineExceeded
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	stop := c.stop
	c.stop = nil
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (c *attemptContext) String() string { return "failover.attemptContext" }
