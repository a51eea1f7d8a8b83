package bench

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Contenders of the in-process comparison. Each runs in a child process of its own (see Run).
const (
	Direct   = "direct"   // miekg/pkcs11, one session per goroutine: C_SignInit + C_Sign, nothing else (the limit)
	Crypto11 = "crypto11" // ThalesGroup/crypto11 v1.6.2 Signer (its own session pool)
	HA       = "pkcs11ha" // pkcs11ha.Key.Sign (crypto.Signer) on a Cluster of the devices in Spec.ConfigPath
)

// Algorithms.
const (
	ECP256  = "ECDSA P-256"
	RSA2048 = "RSA-2048"
)

// ChildEnv is the environment variable that carries a Spec to a child process.
const ChildEnv = "HSMBENCH_CHILD"

// Spec is one measurement cell as run by a child process.
type Spec struct {
	Contender  string            `json:"contender"`
	Alg        string            `json:"alg"`
	Goroutines int               `json:"goroutines"`
	Warmup     time.Duration     `json:"warmup"`
	Module     string            `json:"module,omitempty"`      // direct, crypto11
	ModuleEnv  map[string]string `json:"module_env,omitempty"`  // direct, crypto11: set before the module is loaded
	TokenLabel string            `json:"token_label,omitempty"` // direct, crypto11
	PIN        string            `json:"pin,omitempty"`         // direct, crypto11
	ConfigPath string            `json:"config_path,omitempty"` // pkcs11ha
	Partition  string            `json:"partition,omitempty"`   // pkcs11ha
	KeyLabel   string            `json:"key_label"`
	KeyID      []byte            `json:"key_id"`
	PubDER     []byte            `json:"pub_der"`          // PKIX public key: the first signature is verified against it
	Secret     []byte            `json:"secret,omitempty"` // a secret-key cell's key value (test key): the first output is checked with it
	CPUProfile string            `json:"cpu_profile,omitempty"`
}

// Slice is one measured slice of a cell.
type Slice struct {
	Ops     int64         `json:"ops"` // successful signatures
	Errors  int64         `json:"errors"`
	Seconds float64       `json:"seconds"`
	User    time.Duration `json:"user"` // CPU time of the child process during the slice
	Sys     time.Duration `json:"sys"`
	// Workers is the CPU time of the child's own children during the slice: pkcs11ha's device workers
	// under policy.isolation process.
	Workers  time.Duration `json:"workers"`
	Load     float64       `json:"load"`
	FirstErr string        `json:"first_err,omitempty"`
	// Calls is every call of the slice, failures included, when it was run with the "trace" command.
	Calls []Call `json:"calls,omitempty"`
}

// Call is one traced call: when it started (Unix nanoseconds, the machine's clock as the parent reads it),
// how long it took, and whether it failed.
type Call struct {
	Start  int64 `json:"s"`
	Nanos  int64 `json:"n"`
	Failed bool  `json:"f,omitempty"`
}

// OpsPerSec is the slice's throughput.
func (s Slice) OpsPerSec() float64 { return float64(s.Ops) / s.Seconds }

// Result is what a child reports for its cell: every slice, and the latency quantiles over all of them.
type Result struct {
	Slices    []Slice          `json:"slices"`
	Ops       int64            `json:"ops"`
	Seconds   float64          `json:"seconds"`
	P50       time.Duration    `json:"p50"`
	P99       time.Duration    `json:"p99"`
	Errors    int64            `json:"errors"`
	FirstErr  string           `json:"first_err,omitempty"`
	Devices   map[string]int64 `json:"devices,omitempty"` // pkcs11ha: serving device -> ops
	LoadStart float64          `json:"load_start"`
	LoadEnd   float64          `json:"load_end"`
	UserPerOp time.Duration    `json:"user_per_op"` // CPU time of the whole child process per successful operation
	SysPerOp  time.Duration    `json:"sys_per_op"`
	// WorkersPerOp is the CPU time of the child's device workers (user + system) per operation.
	WorkersPerOp time.Duration `json:"workers_per_op"`
}

// OpsPerSec is the cell's throughput over all its slices.
func (r Result) OpsPerSec() float64 { return float64(r.Ops) / r.Seconds }

// spread is (max-min)/median of the slices' ops/s (0 without slices).
func (r Result) spread() float64 {
	if len(r.Slices) == 0 {
		return 0
	}
	var ops []float64
	for _, sl := range r.Slices {
		ops = append(ops, sl.OpsPerSec())
	}
	lo, hi := ops[0], ops[0]
	for _, x := range ops {
		lo, hi = min(lo, x), max(hi, x)
	}
	return (hi - lo) / median(ops)
}

// cpuTimes returns this process's user and system CPU time so far,
// and the CPU time of its live children (device workers) so far.
func cpuTimes() (user, sys, children time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), childrenCPU(os.Getpid())
}

// command is what the parent sends a child, one JSON object per line.
type command struct {
	Cmd string        `json:"cmd"` // "run" (one measured slice of D), "trace" (the same with every call's Call) or "done" (report the Result and exit)
	D   time.Duration `json:"d,omitempty"`
}

// signFunc signs one digest; dev names the serving device when the contender knows it.
type signFunc func(digest []byte) (sig []byte, dev string, err error)

// contender makes one signFunc per goroutine (direct: each with its own session) and cleans up.
type contender interface {
	worker(i int) (signFunc, error)
	close()
}

// RunChild is the life of a child process: it sets up the contender of the Spec in the environment
// variable ChildEnv, signs once and verifies the signature, warms up, writes {"ready":true} and then obeys
// commands read from in: "run" measures one slice and writes its Slice, "done" writes the Result over every
// slice and returns. Contenders of one cell stay alive side by side and are run one slice at a time in
// turn, so that a change in the machine's load hits all of them alike.
func RunChild(in io.Reader, out io.Writer) error {
	var s Spec
	if err := json.Unmarshal([]byte(os.Getenv(ChildEnv)), &s); err != nil {
		return fmt.Errorf("hsm-bench child: bad %s: %w", ChildEnv, err)
	}
	c, workers, digest, err := setup(s)
	if err != nil {
		return err
	}
	defer c.close()
	enc := json.NewEncoder(out)
	if err := enc.Encode(map[string]bool{"ready": true}); err != nil {
		return err
	}
	var stopProfile func()
	defer func() {
		if stopProfile != nil {
			stopProfile()
		}
	}()
	res := Result{LoadStart: math.NaN()}
	var lats Latencies
	var user, sys, wcpu time.Duration
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var cmd command
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			return fmt.Errorf("hsm-bench child: bad command %q: %w", sc.Text(), err)
		}
		switch cmd.Cmd {
		case "run", "trace":
			if stopProfile == nil && s.CPUProfile != "" {
				f, err := os.Create(s.CPUProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
			}
			l0 := loadAvg()
			if math.IsNaN(res.LoadStart) {
				res.LoadStart = l0
			}
			u0, s0, w0 := cpuTimes()
			sl, l, devs := drive(workers, digest, cmd.D, cmd.Cmd == "trace")
			u1, s1, w1 := cpuTimes()
			sl.User, sl.Sys, sl.Workers, sl.Load = u1-u0, s1-s0, w1-w0, loadAvg()
			user, sys, wcpu = user+sl.User, sys+sl.Sys, wcpu+sl.Workers
			res.LoadEnd = sl.Load
			res.Slices = append(res.Slices, sl)
			res.Ops += sl.Ops
			res.Errors += sl.Errors
			res.Seconds += sl.Seconds
			if res.FirstErr == "" {
				res.FirstErr = sl.FirstErr
			}
			for k, v := range devs {
				if res.Devices == nil {
					res.Devices = map[string]int64{}
				}
				res.Devices[k] += v
			}
			lats = append(lats, l...)
			if err := enc.Encode(sl); err != nil {
				return err
			}
		case "done":
			res.P50, res.P99 = lats.Quantile(0.50), lats.Quantile(0.99)
			if res.Ops > 0 {
				res.UserPerOp, res.SysPerOp = user/time.Duration(res.Ops), sys/time.Duration(res.Ops)
				res.WorkersPerOp = wcpu / time.Duration(res.Ops)
			}
			return enc.Encode(res)
		default:
			return fmt.Errorf("hsm-bench child: unknown command %q", cmd.Cmd)
		}
	}
	return sc.Err()
}

// setup makes the contender and its workers, checks a first signature and runs the warm-up.
func setup(s Spec) (contender, []signFunc, []byte, error) {
	var pub any
	var err error
	if !isSecretAlg(s.Alg) {
		if pub, err = x509.ParsePKIXPublicKey(s.PubDER); err != nil {
			return nil, nil, nil, fmt.Errorf("public key: %w", err)
		}
	}
	var c contender
	switch {
	case s.Contender == Direct && isSecretAlg(s.Alg):
		c, err = newDirectSecret(s)
	case s.Contender == HA && isSecretAlg(s.Alg):
		c, err = newHASecret(s)
	case s.Contender == Direct:
		c, err = newDirect(s)
	case s.Contender == Crypto11:
		c, err = newCrypto11(s)
	case s.Contender == HA:
		c, err = newHA(s)
	default:
		err = fmt.Errorf("unknown contender %q for %s", s.Contender, s.Alg)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", s.Contender, err)
	}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	workers := make([]signFunc, s.Goroutines)
	for i := range workers {
		if workers[i], err = c.worker(i); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: worker %d: %w", s.Contender, i, err)
		}
	}
	digest := benchInput(s)
	sig, _, err := workers[0](digest)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: first signature: %w", s.Contender, err)
	}
	if isSecretAlg(s.Alg) {
		err = verifySecret(s, digest, sig)
	} else {
		err = verify(pub, digest, sig, s.Contender == Direct)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: first output does not verify: %w", s.Contender, err)
	}
	// Warm-up: sessions opened, caches and latency estimates filled.
	drive(workers, digest, s.Warmup, false)
	runtime.GC()
	ok = true
	return c, workers, digest, nil
}

// drive runs every worker in a closed loop for d and measures each operation: the slice's counts, every
// successful operation's latency and the serving devices; with trace, the slice's Calls too.
func drive(workers []signFunc, digest []byte, d time.Duration, trace bool) (Slice, Latencies, map[string]int64) {
	var stop atomic.Bool
	var errs atomic.Int64
	var firstErr atomic.Pointer[string]
	lats := make([]Latencies, len(workers))
	devs := make([]map[string]int64, len(workers))
	calls := make([][]Call, len(workers))
	var wg, ready sync.WaitGroup
	startGate := make(chan struct{})
	for i, w := range workers {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			l := make(Latencies, 0, 1<<14)
			dv := map[string]int64{}
			ready.Done()
			<-startGate
			for !stop.Load() {
				t0 := time.Now()
				_, dev, err := w(digest)
				el := time.Since(t0)
				if trace {
					calls[i] = append(calls[i], Call{Start: t0.UnixNano(), Nanos: int64(el), Failed: err != nil})
				}
				if err != nil {
					if errs.Add(1) == 1 {
						s := err.Error()
						firstErr.Store(&s)
					}
					time.Sleep(time.Millisecond) // as a client would back off; do not spin on a fast error
					continue
				}
				l = append(l, int64(el))
				if dev != "" {
					dv[dev]++
				}
			}
			lats[i], devs[i] = l, dv
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(startGate)
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	sl := Slice{Seconds: time.Since(t0).Seconds(), Errors: errs.Load()}
	if p := firstErr.Load(); p != nil {
		sl.FirstErr = *p
	}
	var all Latencies
	dv := map[string]int64{}
	for i := range lats {
		all = append(all, lats[i]...)
		sl.Calls = append(sl.Calls, calls[i]...)
		for k, v := range devs[i] {
			dv[k] += v
		}
	}
	sl.Ops = int64(len(all)) // successes only; failures are counted in Errors
	return sl, all, dv
}

// verify checks a signature over digest; raw: an ECDSA signature as PKCS#11 returns it (r||s).
func verify(pub any, digest, sig []byte, raw bool) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if raw {
			n := len(sig) / 2
			der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
			if err != nil {
				return err
			}
			sig = der
		}
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA signature invalid")
		}
		return nil
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig)
	}
	return fmt.Errorf("unsupported public key %T", pub)
}

// ensure crypto/rand stays linked for contenders that want a reader (crypto.Signer's first argument).
var randReader = rand.Reader
