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

// deviceSigner signs and names the device that served: a *pkcs11ha.Key through keySigner, a fake in tests.
type deviceSigner interface {
	SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error)
}

// keySigner is a *pkcs11ha.Key as a deviceSigner: the device comes from the call's pkcs11ha.Outcome.
type keySigner struct{ k *pkcs11ha.Key }

func (s keySigner) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	var out pkcs11ha.Outcome
	sig, err := s.k.SignContext(pkcs11ha.WithOutcome(ctx, &out), digest, opts)
	return sig, out.Device, err
}

// op is one operation of a closed-loop load.
type op struct {
	start, end time.Time
	dev        string
	err        error
}

// load runs n goroutines signing in a closed loop, each call with the caller deadline timeout, until
// stop is called, which returns every operation. The workers keep their operations in buffers of their
// own until stop (no lock per call); what a scenario must see while the load runs is kept apart, in
// atomics: lastDR.
type load struct {
	stopFlag atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	ops      [][]op
	born     time.Time    // origin of lastDR, with the monotonic clock
	lastDR   atomic.Int64 // end of the latest successful DR-served operation, ns since born; 0: none yet
}

func startLoad(k deviceSigner, n int, timeout time.Duration) *load {
	l := &load{ops: make([][]op, n), born: time.Now()}
	digest := sha256.Sum256([]byte("hsm-bench p11-kit"))
	for i := range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			buf := make([]op, 0, 1<<14)
			for !l.stopFlag.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				t0 := time.Now()
				_, dev, err := k.SignDevice(ctx, digest[:], crypto.SHA256)
				t1 := time.Now()
				cancel()
				buf = append(buf, op{start: t0, end: t1, dev: dev, err: err})
				if err == nil && isDR(dev) {
					l.sawDR(t1)
				}
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

// sawDR records a successful DR-served operation that ended at end, keeping the latest.
func (l *load) sawDR(end time.Time) {
	ns := int64(end.Sub(l.born))
	for {
		cur := l.lastDR.Load()
		if ns <= cur || l.lastDR.CompareAndSwap(cur, ns) {
			return
		}
	}
}

// drSuccessAfter reports whether a DR device has served an operation that ended after t.
func (l *load) drSuccessAfter(t time.Time) bool {
	last := l.lastDR.Load()
	return last != 0 && last > int64(t.Sub(l.born))
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
