package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
)

// loadKey is one key the load signs with, and how to verify its signatures with the standard library.
type loadKey struct {
	key  *sidecarclient.Key
	pub  crypto.PublicKey // the key the harness imported (not the sidecar's word for it)
	opts crypto.SignerOpts
	name string // partition/label
	what string
}

func (k loadKey) verify(digest, sig []byte) bool {
	switch pub := k.pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pub, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(pub, k.opts.HashFunc(), digest, sig) == nil
	}
	return false
}

// loadGen signs with several workers through the sidecar, verifies every signature, and counts the
// successes per device (the device the sidecar names in its answer) and the failures. A sampler keeps the
// counters of the last seconds so that rates and "who served the last half second" can be read.
type loadGen struct {
	devices []string
	index   map[string]int
	perDev  []atomic.Int64 // successes per device; the last slot counts unknown device names
	ok      atomic.Int64
	failed  atomic.Int64

	stopCh  chan struct{}
	wg      sync.WaitGroup
	onError func(n int64, keyName string, err error)
	onCall  func(start time.Time, latency time.Duration, device string, err error)

	mu      sync.Mutex
	samples []loadSample // every sampleEvery, the last sampleKeep
}

type loadSample struct {
	at     time.Time
	perDev []int64
	ok     int64
	failed int64
}

const (
	sampleEvery = 100 * time.Millisecond
	sampleKeep  = 31 // 3 s
)

// startLoad starts workers signers that together make at most rate signatures per second (0: no limit).
// onError is called with every failed call and its running count, onCall (if not nil) with every call.
func startLoad(keys []loadKey, devices []string, workers int, rate float64, t0 time.Time,
	onError func(int64, string, error), onCall func(time.Time, time.Duration, string, error)) *loadGen {
	g := &loadGen{
		devices: devices,
		index:   make(map[string]int, len(devices)),
		perDev:  make([]atomic.Int64, len(devices)+1),
		stopCh:  make(chan struct{}),
		onError: onError,
		onCall:  onCall,
	}
	for i, d := range devices {
		g.index[d] = i
	}
	g.sample(t0)
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(workers) / rate * float64(time.Second))
	}
	for w := range workers {
		g.wg.Add(1)
		go g.worker(keys, w, interval)
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-g.stopCh:
				return
			case now := <-t.C:
				g.sample(now)
			}
		}
	}()
	return g
}

func (g *loadGen) worker(keys []loadKey, w int, interval time.Duration) {
	defer g.wg.Done()
	next := time.Now()
	var msg [16]byte
	binary.BigEndian.PutUint64(msg[:8], uint64(w))
	for i := uint64(0); ; i++ {
		select {
		case <-g.stopCh:
			return
		default:
		}
		k := keys[(uint64(w)+i)%uint64(len(keys))]
		binary.BigEndian.PutUint64(msg[8:], i)
		digest := sha256.Sum256(msg[:])
		// The operation is never cancelled by the demo's end: a cancelled call would count as a failure.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		sig, dev, err := k.key.SignDevice(ctx, digest[:], k.opts)
		latency := time.Since(start)
		cancel()
		if err == nil && !k.verify(digest[:], sig) {
			err = errors.New("the signature does not verify with crypto/" + k.what)
		}
		if g.onCall != nil {
			g.onCall(start, latency, dev, err)
		}
		if err != nil {
			n := g.failed.Add(1)
			if g.onError != nil {
				g.onError(n, k.name, err)
			}
		} else {
			g.ok.Add(1)
			idx, ok := g.index[dev]
			if !ok {
				idx = len(g.devices)
			}
			g.perDev[idx].Add(1)
		}
		if interval > 0 {
			next = next.Add(interval)
			now := time.Now()
			if next.Before(now) {
				next = now // no burst to catch up after a slow call
			}
			select {
			case <-g.stopCh:
				return
			case <-time.After(next.Sub(now)):
			}
		}
	}
}

func (g *loadGen) sample(now time.Time) {
	s := loadSample{at: now, perDev: make([]int64, len(g.perDev)), ok: g.ok.Load(), failed: g.failed.Load()}
	for i := range g.perDev {
		s.perDev[i] = g.perDev[i].Load()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.samples = append(g.samples, s)
	if len(g.samples) > sampleKeep {
		g.samples = g.samples[len(g.samples)-sampleKeep:]
	}
}

// window returns the successes per device and the failures over the last d (as far as the samples go
// back), and the length of the window actually used.
func (g *loadGen) window(d time.Duration) (perDev map[string]int64, failed int64, span time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	perDev = make(map[string]int64, len(g.devices))
	if len(g.samples) < 2 {
		return perDev, 0, 0
	}
	last := g.samples[len(g.samples)-1]
	first := g.samples[0]
	for i := len(g.samples) - 2; i >= 0; i-- {
		first = g.samples[i]
		if last.at.Sub(first.at) >= d-sampleEvery/2 {
			break
		}
	}
	for i, name := range g.devices {
		perDev[name] = last.perDev[i] - first.perDev[i]
	}
	return perDev, last.failed - first.failed, last.at.Sub(first.at)
}

// rates returns the signatures per second per device over the last second.
func (g *loadGen) rates() (perDev map[string]float64, total float64) {
	counts, _, span := g.window(time.Second)
	perDev = make(map[string]float64, len(counts))
	if span <= 0 {
		return perDev, 0
	}
	for name, n := range counts {
		r := float64(n) / span.Seconds()
		perDev[name] = r
		total += r
	}
	return perDev, total
}

func (g *loadGen) failedCount() int64 {
	if g == nil {
		return 0
	}
	return g.failed.Load()
}

// stop stops the workers once their current operation has returned, and waits for them.
func (g *loadGen) stop() {
	select {
	case <-g.stopCh:
	default:
		close(g.stopCh)
	}
	g.wg.Wait()
}

// totals returns the successes and failures so far, and the successes per device.
func (g *loadGen) totals() (total, failed int64, perDev map[string]int64) {
	perDev = make(map[string]int64, len(g.devices))
	for i, name := range g.devices {
		perDev[name] = g.perDev[i].Load()
	}
	ok, failed := g.ok.Load(), g.failed.Load()
	return ok + failed, failed, perDev
}
