package chaos

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	crand "crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Signer is what the load generator signs with: a *pkcs11ha.Key (through a context from
// pkcs11ha.WithOutcome), or a sidecar client's key. It names the device that made the signature.
type Signer interface {
	SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error)
}

// Decrypter is what the load generator decrypts with; it names the device that decrypted.
type Decrypter interface {
	DecryptDevice(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, string, error)
}

// Result is the outcome of one operation of a Task.
type Result struct {
	Device  string        // the device that served it ("" or "none" when it failed)
	Err     error         // the error the caller saw
	Invalid error         // non-nil when the call succeeded but its result did not verify
	Latency time.Duration // of the call alone, without preparing its input or verifying its output
}

// Task is one kind of operation in the load mix.
type Task struct {
	Name   string // e.g. "payments/ec-key ecdsa-sha256"
	Weight int    // relative frequency; <= 0 counts as 1
	// Do runs one operation under ctx (which carries the caller's deadline) and verifies its result.
	Do func(ctx context.Context, rng *rand.Rand) Result
}

// SignTask signs a fresh random digest per operation and verifies the signature with pub, which should be
// the key the caller expects (not the one the cluster reports), so a device holding a different key under
// the same label is caught. opts selects the scheme: crypto.Hash for PKCS#1 v1.5 or ECDSA,
// *rsa.PSSOptions for RSA-PSS, crypto.Hash(0) for Ed25519 (the message itself is signed).
func SignTask(name string, weight int, s Signer, pub crypto.PublicKey, opts crypto.SignerOpts) Task {
	h := opts.HashFunc()
	return Task{Name: name, Weight: weight, Do: func(ctx context.Context, rng *rand.Rand) Result {
		msg := make([]byte, 32)
		fill(rng, msg)
		in := msg
		if h != 0 {
			d := h.New()
			d.Write(msg)
			in = d.Sum(nil)
		}
		start := time.Now()
		sig, dev, err := s.SignDevice(ctx, in, opts)
		res := Result{Device: dev, Err: err, Latency: time.Since(start)}
		if err == nil {
			res.Invalid = verify(pub, h, in, sig, opts)
		}
		return res
	}}
}

func verify(pub crypto.PublicKey, h crypto.Hash, in, sig []byte, opts crypto.SignerOpts) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(k, h, in, sig, pss)
		}
		return rsa.VerifyPKCS1v15(k, h, in, sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, in, sig) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case ed25519.PublicKey:
		if !ed25519.Verify(k, in, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("cannot verify with a %T", pub)
}

// DecryptOAEPTask encrypts a fresh random 32-byte secret per operation with pub (RSA-OAEP, MGF1 with the
// same hash, no label), has it decrypted and compares. SoftHSM 2.6.1 does OAEP natively with SHA-1 only.
func DecryptOAEPTask(name string, weight int, d Decrypter, pub *rsa.PublicKey, h crypto.Hash) Task {
	opts := &rsa.OAEPOptions{Hash: h}
	return Task{Name: name, Weight: weight, Do: func(ctx context.Context, rng *rand.Rand) Result {
		secret := make([]byte, 32)
		fill(rng, secret)
		ct, err := rsa.EncryptOAEP(h.New(), crand.Reader, pub, secret, nil)
		if err != nil {
			return Result{Err: fmt.Errorf("chaos: encrypting the test secret: %w", err)}
		}
		start := time.Now()
		pt, dev, err := d.DecryptDevice(ctx, ct, opts)
		res := Result{Device: dev, Err: err, Latency: time.Since(start)}
		if err == nil && !bytes.Equal(pt, secret) {
			res.Invalid = fmt.Errorf("decrypted %d bytes that differ from the %d-byte secret", len(pt), len(secret))
		}
		return res
	}}
}

func fill(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := i; j < len(b) && j < i+8; j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}

// Op is one recorded operation.
type Op struct {
	Task     int           // index into Load.Tasks
	Phase    int           // index into Recorder.Phases: the phase the operation started in
	Start    time.Duration // since the recorder's origin
	Latency  time.Duration
	Deadline time.Duration // the caller's deadline for this operation
	Device   string        // serving device; "" or "none" if it failed
	Err      error
	Invalid  error
}

// End is when the operation returned, since the recorder's origin.
func (o *Op) End() time.Duration { return o.Start + o.Latency }

// Served reports whether the operation succeeded (whether or not its result verified).
func (o *Op) Served() bool { return o.Err == nil }

// Phase is a named stretch of the fault script. Healthy phases are those in which every local device is
// healthy: the DR share is measured over them.
type Phase struct {
	Name    string
	Healthy bool
	Start   time.Duration
}

// Mark is a named instant of the fault script (fault injected, fault removed, ...).
type Mark struct {
	Name string
	At   time.Duration
}

// Recorder keeps every operation, the phases and the marks of a run. Safe for concurrent use.
type Recorder struct {
	origin time.Time
	phase  atomic.Int32

	mu     sync.Mutex
	ops    []Op
	phases []Phase
	marks  []Mark
}

// NewRecorder starts a recorder whose first phase is named first.
func NewRecorder(first string, healthy bool) *Recorder {
	r := &Recorder{origin: time.Now()}
	r.phases = []Phase{{Name: first, Healthy: healthy}}
	return r
}

// Now is the time since the recorder's origin.
func (r *Recorder) Now() time.Duration { return time.Since(r.origin) }

// Origin is the recorder's time zero.
func (r *Recorder) Origin() time.Time { return r.origin }

// Phase starts a new phase and returns its start.
func (r *Recorder) Phase(name string, healthy bool) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := r.Now()
	r.phases = append(r.phases, Phase{Name: name, Healthy: healthy, Start: at})
	r.phase.Store(int32(len(r.phases) - 1))
	return at
}

// Mark records a named instant and returns it.
func (r *Recorder) Mark(name string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := r.Now()
	r.marks = append(r.marks, Mark{Name: name, At: at})
	return at
}

// Record adds an operation.
func (r *Recorder) Record(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Ops returns a copy of the operations recorded so far, in the order they returned.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ops)
}

// Phases returns the phases so far.
func (r *Recorder) Phases() []Phase {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.phases)
}

// Marks returns the marks so far.
func (r *Recorder) Marks() []Mark {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.marks)
}

// Len is the number of operations recorded so far.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// WaitFor waits until an operation for which pred is true has been recorded (looking at operations
// recorded from index from on) and returns it, or returns false when ctx ends first.
func (r *Recorder) WaitFor(ctx context.Context, from int, pred func(*Op) bool) (Op, bool) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		r.mu.Lock()
		for ; from < len(r.ops); from++ {
			if pred(&r.ops[from]) {
				op := r.ops[from]
				r.mu.Unlock()
				return op, true
			}
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return Op{}, false
		case <-t.C:
		}
	}
}

// Load is a closed-loop load generator: Workers goroutines, each running one operation at a time, picked
// at random from Tasks by weight, each with its own caller deadline.
type Load struct {
	Workers  int           // default 8
	Tasks    []Task        // required
	Deadline time.Duration // the caller's deadline per operation; default 2 s
	// One operation in ShortEvery (0: none) gets ShortDeadline instead: a caller in a hurry.
	ShortEvery    int
	ShortDeadline time.Duration
	// ErrorBackoff is how long a worker pauses after a failed operation, as a real client would, so that a
	// fast-failing cluster does not turn the load into a busy loop; default 5 ms, negative for none.
	ErrorBackoff time.Duration
	// Rate is the target rate in operations per second over all workers (each worker paces itself at
	// Rate/Workers, without catching up after a slow operation); 0 runs a closed loop as fast as the
	// cluster answers. A rate leaves the host CPU headroom, so that latency measures the cluster and the
	// faults rather than a starved machine.
	Rate float64
	Seed uint64 // default: random
}

// Start runs the load until the returned stop function is called; stop waits for the operations in
// flight (they are never cancelled by stop: only their own deadline ends them) and returns how many
// operations were recorded. Operations are recorded in rec.
func (l *Load) Start(rec *Recorder) (stop func() int) {
	workers := l.Workers
	if workers <= 0 {
		workers = 8
	}
	deadline := l.Deadline
	if deadline <= 0 {
		deadline = 2 * time.Second
	}
	backoff := l.ErrorBackoff
	if backoff == 0 {
		backoff = 5 * time.Millisecond
	}
	seed := l.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	cum := make([]int, len(l.Tasks))
	total := 0
	for i, t := range l.Tasks {
		total += max(t.Weight, 1)
		cum[i] = total
	}
	if total == 0 {
		panic("chaos: Load without tasks")
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var interval time.Duration
			if l.Rate > 0 {
				interval = time.Duration(float64(workers) / l.Rate * float64(time.Second))
			}
			next := time.Now().Add(time.Duration(rng.Int64N(int64(max(interval, 1))))) // spread the workers
			for !done.Load() {
				if interval > 0 {
					if wait := time.Until(next); wait > 0 {
						time.Sleep(wait)
					}
					next = next.Add(interval)
					if now := time.Now(); next.Before(now) {
						next = now // no catching up after a slow operation
					}
				}
				ti, _ := slices.BinarySearch(cum, rng.IntN(total)+1)
				d := deadline
				if l.ShortEvery > 0 && l.ShortDeadline > 0 && rng.IntN(l.ShortEvery) == 0 {
					d = l.ShortDeadline
				}
				phase := int(rec.phase.Load())
				ctx, cancel := context.WithTimeout(context.Background(), d)
				start := rec.Now()
				res := l.Tasks[ti].Do(ctx, rng)
				cancel()
				if res.Latency == 0 {
					res.Latency = rec.Now() - start
				}
				rec.Record(Op{Task: ti, Phase: phase, Start: start, Latency: res.Latency, Deadline: d,
					Device: res.Device, Err: res.Err, Invalid: res.Invalid})
				n.Add(1)
				if res.Err != nil && backoff > 0 {
					time.Sleep(backoff)
				}
			}
		}()
	}
	var once sync.Once
	return func() int {
		once.Do(func() {
			done.Store(true)
			wg.Wait()
		})
		return int(n.Load())
	}
}

// Summary is what the results table shows for a set of operations.
type Summary struct {
	Ops, Failed, Invalid int
	P50, P99, P999, Max  time.Duration
	DR                   int // operations served by a DR device
	HealthyServed        int // operations served while every phase they overlapped was healthy
	HealthyDR            int // of those, served by a DR device
	ByDevice             map[string]int
}

// DRShareHealthy is the share of operations served by DR during healthy phases (0 if there were none).
func (s Summary) DRShareHealthy() float64 {
	if s.HealthyServed == 0 {
		return 0
	}
	return float64(s.HealthyDR) / float64(s.HealthyServed)
}

// Summarize computes the figures of the results table; isDR says whether a device is outside the local
// region.
func Summarize(ops []Op, phases []Phase, isDR func(device string) bool) Summary {
	s := Summary{Ops: len(ops), ByDevice: map[string]int{}}
	lat := make([]time.Duration, 0, len(ops))
	for i := range ops {
		o := &ops[i]
		lat = append(lat, o.Latency)
		if !o.Served() {
			s.Failed++
			continue
		}
		if o.Invalid != nil {
			s.Invalid++
		}
		s.ByDevice[o.Device]++
		dr := isDR(o.Device)
		if dr {
			s.DR++
		}
		if HealthyThroughout(o, phases) {
			s.HealthyServed++
			if dr {
				s.HealthyDR++
			}
		}
	}
	slices.Sort(lat)
	s.P50, s.P99, s.P999 = Percentile(lat, 0.50), Percentile(lat, 0.99), Percentile(lat, 0.999)
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	return s
}

// HealthyThroughout reports whether every phase the operation overlapped, from its start to its end, is
// healthy: a call caught in flight by a fault does not count as made while healthy.
func HealthyThroughout(o *Op, phases []Phase) bool {
	if o.Phase >= len(phases) {
		return false
	}
	end := o.End()
	for i := o.Phase; i < len(phases); i++ {
		if i > o.Phase && phases[i].Start > end {
			break
		}
		if !phases[i].Healthy {
			return false
		}
	}
	return true
}

// Percentile is the nearest-rank q-quantile of sorted latencies (0 when empty).
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
