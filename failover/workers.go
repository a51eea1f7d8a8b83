package failover

import (
	"time"
)

// workerIdle is how long an idle attempt worker waits for work before it exits.
const workerIdle = 10 * time.Second

// spawn runs f on an idle attempt worker, or on a new one. Attempts run off the caller's goroutine so a
// call stuck in cgo never holds the caller; reusing workers keeps their grown stacks (a fresh goroutine
// per attempt grew its stack again on every call: ~8 µs of an in-process signature). A worker stuck in a
// hung call is simply not idle: new work gets a new worker.
func (r *Router) spawn(t task) {
	select {
	case r.work <- t:
	default:
		go r.worker(t)
	}
}

// task is an attempt as a worker sees it: an interface, not a closure, so handing it over allocates
// nothing.
type task interface{ runAttempt() }

func (r *Router) worker(f task) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f.runAttempt()
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
