package softhsmtest

import (
	"context"
	"sync"
)

// group runs functions concurrently, at most limit at a time, and returns the first error; the first
// error cancels the context given to the functions that have not finished (errgroup.WithContext with
// SetLimit, without the dependency).
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

func newGroup(ctx context.Context, limit int) *group {
	if limit < 1 {
		limit = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	return &group{ctx: ctx, cancel: cancel, sem: make(chan struct{}, limit)}
}

// Go runs f in a goroutine once a slot is free. It never blocks.
func (g *group) Go(f func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		select {
		case g.sem <- struct{}{}:
		case <-g.ctx.Done():
			g.fail(g.ctx.Err())
			return
		}
		defer func() { <-g.sem }()
		if err := g.ctx.Err(); err != nil {
			g.fail(err)
			return
		}
		if err := f(g.ctx); err != nil {
			g.fail(err)
		}
	}()
}

func (g *group) fail(err error) {
	g.once.Do(func() {
		g.err = err
		g.cancel()
	})
}

// Wait waits for every function and returns the first error.
func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
