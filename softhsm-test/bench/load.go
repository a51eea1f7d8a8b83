package bench

import (
	"context"
	"crypto"
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// op is one operation of a closed-loop load.
type op struct {
	start, end time.Time
	dev        string
	err        error
}

// load runs n goroutines signing in a closed loop, each call with the caller deadline timeout, until
// stop is called; ops returns everything recorded so far (safe after stop).
type load struct {
	stopFlag atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	ops      [][]op
}

func startLoad(k *pkcs11ha.Key, n int, timeout time.Duration) *load {
	l := &load{ops: make([][]op, n)}
	digest := sha256.Sum256([]byte("hsm-bench p11-kit"))
	for i := range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			buf := make([]op, 0, 1<<14)
			var out pkcs11ha.Outcome // the device that served, at no allocation per call
			octx := pkcs11ha.WithOutcome(context.Background(), &out)
			for !l.stopFlag.Load() {
				ctx, cancel := context.WithTimeout(octx, timeout)
				t0 := time.Now()
				_, err := k.SignContext(ctx, digest[:], crypto.SHA256)
				t1 := time.Now()
				cancel()
				buf = append(buf, op{start: t0, end: t1, dev: out.Device, err: err})
				if len(buf) == cap(buf) {
					l.flush(i, &buf)
				}
				if err != nil {
					time.Sleep(time.Millisecond) // do not spin on a fast error
				}
			}
			l.flush(i, &buf)
		}()
	}
	return l
}

func (l *load) flush(i int, buf *[]op) {
	l.mu.Lock()
	l.ops[i] = append(l.ops[i], *buf...)
	l.mu.Unlock()
	*buf = (*buf)[:0]
}

func (l *load) stop() []op {
	l.stopFlag.Store(true)
	l.wg.Wait()
	var all []op
	for _, o := range l.ops {
		all = append(all, o...)
	}
	return all
}

// window returns the operations that started in [from, to).
func window(ops []op, from, to time.Time) []op {
	var out []op
	for _, o := range ops {
		if !o.start.Before(from) && o.start.Before(to) {
			out = append(out, o)
		}
	}
	return out
}

// latencySummary summarises operations.
type latencySummary struct {
	Ops, Errors   int
	OpsPerSec     float64
	P50, P99, Max time.Duration
	ByDevice      map[string]int
}

func summarize(ops []op, span time.Duration) latencySummary {
	s := latencySummary{ByDevice: map[string]int{}}
	var lat Latencies
	for _, o := range ops {
		if o.err != nil {
			s.Errors++
			continue
		}
		s.Ops++
		s.ByDevice[o.dev]++
		lat = append(lat, int64(o.end.Sub(o.start)))
	}
	s.P50, s.P99, s.Max = lat.Quantile(0.5), lat.Quantile(0.99), lat.Quantile(1)
	if span > 0 {
		s.OpsPerSec = float64(s.Ops) / span.Seconds()
	}
	return s
}
