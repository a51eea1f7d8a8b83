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
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// Cluster is a set of devices holding the same partitions, with routing, breakers, health probes and
// recovery. It is safe for concurrent use.
type Cluster struct {
	s        *settings
	devices  []*clusterDevice
	router   *failover.Router
	monitors []*health.Monitor
	parts    []*clusterPartition
	metrics  *metrics
	log      *slog.Logger
	closed   atomic.Bool
	keysMu   sync.Mutex // serialises key-consistency checks
	closeOne sync.Once
	pins     pinState     // PINs reloaded after a wrong one (pinreload.go)
	keySync  keySyncState // background key sync and live pickup (keysync.go)
}

// do routes one operation for key k through the failover layer. check, when not nil, vets a result inside
// the attempt (verify-after-sign): an error from it fails that attempt. out, when not nil, learns how the
// call went.
func (cl *Cluster) do(ctx context.Context, opName string, k *Key, op *devicebackend.Op, check func([]byte) error, out *Outcome) ([]byte, error) {
	return cl.doOn(ctx, opName, k.entry.mask.Load(), k.pidx, op, check, out)
}

// doOn is do for the key of op in partition pi, held by the devices of mask (a private or a secret key).
func (cl *Cluster) doOn(ctx context.Context, opName string, mask uint64, pi int, op *devicebackend.Op, check func([]byte) error, out *Outcome) ([]byte, error) {
	if cl.closed.Load() {
		return nil, ErrClosed
	}
	if mask == 0 {
		return nil, fmt.Errorf("%w: no device holds key %q of partition %q", ErrNoDevice, op.Label, cl.parts[pi].name)
	}
	start := time.Now()
	v, res, err := failover.Do(ctx, cl.router, opName, failover.Mask(mask), func(ctx context.Context, m int) ([]byte, error) {
		return cl.runOn(ctx, m, pi, op, check)
	})
	err = errclass.FromRouter(err)
	dev := ""
	if err == nil && res.Member >= 0 && res.Member < len(cl.devices) {
		dev = cl.devices[res.Member].name
	}
	cl.metrics.operation(opName, dev, res, err, time.Since(start))
	if out != nil {
		out.Device, out.Attempts, out.Hedged = dev, res.Attempts, res.Hedged
	}
	return v, err
}

// runOn is one attempt: op on device m's partition pi, then check.
func (cl *Cluster) runOn(ctx context.Context, m, pi int, op *devicebackend.Op, check func([]byte) error) ([]byte, error) {
	v, err := cl.devices[m].be.Run(ctx, pi, op)
	if err == nil && check != nil {
		if err = check(v); err != nil {
			v = nil
		}
	}
	cl.noteBadSignature(m, err)
	return v, errclass.Route(err)
}

// Close stops probes and releases the modules. It is bounded by policy.close_timeout: idle module instances
// are finalised, instances with calls stuck in them are left alone.
func (cl *Cluster) Close() error {
	cl.closeOne.Do(func() {
		cl.closed.Store(true)
		done := make(chan struct{})
		go func() {
			defer close(done)
			cl.stopKeySync()
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
	// At once, not one after the other: each close is bounded by close_timeout, and so is their sum.
	var wg sync.WaitGroup
	for _, d := range cl.devices {
		wg.Go(func() { d.be.Close(cl.s.own.CloseTimeout) })
	}
	wg.Wait()
}

// Config returns a copy of the configuration the cluster runs with, its policy holding the values in
// effect (defaults included).
func (cl *Cluster) Config() *Config {
	c := cl.s.cfg.clone()
	return &c
}
