package pkcs11ha

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// The device backend: what the cluster asks of one device, whether its PKCS#11 module runs in this process
// (*device, policy.isolation "none") or in a worker process of its own (*workerDevice, "process";
// docs/ARCHITECTURE.md, "Process model"). The router, the catalogue, the monitors and both doors of the
// sidecar see only this interface.
type backend interface {
	// open brings the device up: module loaded, tokens found, logged in, keys listed.
	open(ctx context.Context) error
	// probe recovers the device when it was seen down (re-initialise, reopen) and checks each open
	// partition's token (C_GetTokenInfo).
	probe(ctx context.Context, othersServing bool) error
	// run executes op on partition pi, with the session-level recovery of the error table.
	run(ctx context.Context, pi int, op *deviceOp) ([]byte, error)
	// keys is a snapshot of partition pi's keys by label; nil when the partition is not open.
	keys(pi int) map[string]*keyObject
	// secretKeys is a snapshot of partition pi's secret keys (AES, HMAC) by label; nil when not open.
	secretKeys(pi int) map[string]*secretObject
	// partition reports partition pi's state on the device.
	partition(pi int) partInfo
	// usePIN makes pin partition pi's PIN; it reports whether the partition, refused before with another
	// PIN, gets one new try at the next probe.
	usePIN(pi int, pin string) bool
	// counts returns the device's recovery accounts for Status.
	counts() backendCounts
	// shares reports whether the device shares its module instance with o (a Luna client's appliances).
	shares(o backend) bool
	// setHooks installs the cluster's callbacks: keysChanged after a (re)open, down when traffic proved
	// the device down.
	setHooks(keysChanged func(), down func(reason string))
	// noteError records a verdict of the cluster about the device (a bad signature) as its last error.
	noteError(err error)
	close(timeout time.Duration)
}

// partInfo is one partition's state on one device.
type partInfo struct {
	Open      bool   // tokens found, logged in
	CredFatal string // why the partition is unusable (its PIN was refused), or ""
	Logins    int64  // C_Login calls so far
	PINHash   [32]byte
}

// backendCounts are a device's recovery accounts.
type backendCounts struct {
	Reinits, Retired, Stuck int64
	LastErr                 *lastError
	CapRefusal              string // why the last re-init was refused (max_stuck_calls), or ""
	// Worker process accounts (zero in process): restarts of the worker and its last exit.
	WorkerPID      int
	WorkerRestarts int64
	WorkerExit     string
}

// clusterDevice is the cluster's handle on one configured device.
type clusterDevice struct {
	idx  int
	name string
	cfg  DeviceConfig
	be   backend
}

// --- the in-process backend: *device ---

var _ backend = (*device)(nil)

func (d *device) probe(ctx context.Context, othersServing bool) error {
	return d.probeTokens(ctx, othersServing)
}

func (d *device) run(ctx context.Context, pi int, op *deviceOp) ([]byte, error) {
	return d.parts[pi].run(ctx, op)
}

func (d *device) keys(pi int) map[string]*keyObject {
	st := d.parts[pi].st.Load()
	if st == nil {
		return nil
	}
	st.keysMu.RLock()
	defer st.keysMu.RUnlock()
	out := make(map[string]*keyObject, len(st.keys))
	for l, k := range st.keys {
		out[l] = k
	}
	return out
}

func (d *device) partition(pi int) partInfo {
	p := d.parts[pi]
	pi2 := partInfo{Open: p.st.Load() != nil, Logins: p.logins.Load(), PINHash: pinHash(p.secret())}
	if why := p.credFatal.Load(); why != nil {
		pi2.Open, pi2.CredFatal = false, *why
	}
	return pi2
}

func (d *device) counts() backendCounts {
	c := backendCounts{Reinits: d.reinitCount(), Retired: d.retiredCount(), Stuck: d.stuck.Load(), LastErr: d.lastErr.Load()}
	if why := d.capRefusal.Load(); why != nil {
		c.CapRefusal = *why
	}
	return c
}

func (d *device) shares(o backend) bool {
	od, ok := o.(*device)
	return ok && od != d && od.mod == d.mod
}

func (d *device) setHooks(keysChanged func(), down func(reason string)) {
	if keysChanged != nil {
		d.onKeys = func(*device) { keysChanged() }
	} else {
		d.onKeys = nil
	}
	d.onDown = down
}

func (d *device) noteError(err error) { d.setErr(err) }

// hooks is a backend's callbacks, set once before it opens (worker.go reads them from its reader).
type hooks struct {
	keysChanged atomic.Pointer[func()]
	down        atomic.Pointer[func(string)]
}

func (h *hooks) set(keysChanged func(), down func(string)) {
	h.keysChanged.Store(&keysChanged)
	h.down.Store(&down)
}

func (h *hooks) onKeys() {
	if f := h.keysChanged.Load(); f != nil && *f != nil {
		(*f)()
	}
}

func (h *hooks) onDown(reason string) {
	if f := h.down.Load(); f != nil && *f != nil {
		(*f)(reason)
	}
}

// newBackend makes the backend of device i of settings s (nothing is loaded yet).
func newBackend(s *settings, i int, log *slog.Logger, m *metrics) (backend, error) {
	if s.own.Isolation == IsolationProcess {
		return newWorkerDevice(s, i, log, m), nil
	}
	return newDevice(s, i, log)
}
