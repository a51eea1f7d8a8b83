package pkcs11ha

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// Cluster is a set of devices holding the same partitions, with routing, breakers, health probes and
// recovery. It is safe for concurrent use.
type Cluster struct {
	s        *settings
	devices  []*device
	router   *failover.Router
	monitors []*health.Monitor
	parts    []*clusterPartition
	metrics  *metrics
	log      *slog.Logger
	closed   atomic.Bool
	keysMu   sync.Mutex // serialises key-consistency checks
	closeOne sync.Once
	pins     pinState // PINs reloaded after a wrong one (pinreload.go)
}

// do routes one operation for key k through the failover layer; out, when not nil, learns how it went.
func (cl *Cluster) do(ctx context.Context, op string, k *Key, fn opFunc, out *Outcome) ([]byte, error) {
	if cl.closed.Load() {
		return nil, ErrClosed
	}
	mask := k.entry.mask.Load()
	if mask == 0 {
		return nil, fmt.Errorf("%w: no device holds key %q of partition %q", ErrNoDevice, k.entry.label, k.part)
	}
	start := time.Now()
	v, res, err := failover.Do(ctx, cl.router, op, failover.Mask(mask), func(ctx context.Context, m int) ([]byte, error) {
		v, err := cl.devices[m].parts[k.pidx].run(ctx, k.entry.label, k.entry.pubDER, fn)
		cl.noteBadSignature(m, err)
		return v, err
	})
	err = fromRouter(err)
	dev := ""
	if err == nil && res.Member >= 0 && res.Member < len(cl.devices) {
		dev = cl.devices[res.Member].name
	}
	cl.metrics.operation(op, dev, res, err, time.Since(start))
	if out != nil {
		out.Device, out.Attempts, out.Hedged = dev, res.Attempts, res.Hedged
	}
	return v, err
}

// LoginAttempts returns how many times C_Login was called for partition on device (for tests and audits).
func (cl *Cluster) LoginAttempts(device, partition string) int64 {
	for _, d := range cl.devices {
		if d.name != device {
			continue
		}
		for _, p := range d.parts {
			if p.cfg.Name == partition {
				return p.logins.Load()
			}
		}
	}
	return 0
}

// Close stops probes and releases the modules. It is bounded by policy.close_timeout: idle module instances
// are finalised, instances with calls stuck in them are left alone.
func (cl *Cluster) Close() error {
	cl.closeOne.Do(func() {
		cl.closed.Store(true)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, m := range cl.monitors {
				m.Stop()
			}
			cl.router.Close()
			cl.releaseDevices()
		}()
		select {
		case <-done:
		case <-time.After(cl.s.own.CloseTimeout):
			cl.log.Warn("close timed out; abandoning hung calls", "timeout", cl.s.own.CloseTimeout)
		}
	})
	return nil
}

func (cl *Cluster) releaseDevices() {
	for _, d := range cl.devices {
		d.close(cl.s.own.CloseTimeout)
	}
}

// Config returns a copy of the configuration the cluster runs with, its policy holding the values in
// effect (defaults included).
func (cl *Cluster) Config() *Config {
	c := cl.s.cfg.clone()
	return &c
}
