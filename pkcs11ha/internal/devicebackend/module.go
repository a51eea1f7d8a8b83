package devicebackend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// envLock serialises module loading and C_Initialize process-wide: p11-kit-client reads
// P11_KIT_SERVER_ADDRESS in C_GetFunctionList and SoftHSM reads SOFTHSM2_CONF in C_Initialize, so the
// environment must hold this device's values for both. It is a channel so a holder blocked in cgo can be
// released by the waiter that gave up on it.
var envLock = make(chan struct{}, 1)

// ModuleKey identifies one module instance: devices with the same canonical path and environment share it.
type ModuleKey struct {
	path string
	env  string // sorted "K=V\x00" pairs
	lane int    // which of a device's instances (lanes.go); 0 unless the module is loaded several times
}

func NewModuleKey(path string, env map[string]string) (ModuleKey, error) {
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ModuleKey{}, err
	}
	if p, err = filepath.Abs(p); err != nil {
		return ModuleKey{}, err
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + env[k] + "\x00")
	}
	return ModuleKey{path: p, env: b.String()}, nil
}

// Instance is one loaded, initialised copy of a module. It is never finalised while a call is in flight
// on it; once retired it is never used again (docs/ARCHITECTURE.md, "Facts about SoftHSM and p11-kit":
// calls that never return).
type Instance struct {
	ctx      *pkcs11.Ctx
	Gen      uint64
	h        *moduleHandle
	Inflight atomic.Int64
	Broken   atomic.Bool // a device-down error was seen: no new calls
	retired  atomic.Bool
	// counted: retired with stuck calls and counted in h.retired, until those calls return.
	counted atomic.Bool
	calls   callSet // the calls in flight (begin/end in stuck.go)
	// Solo, when not nil, admits one call at a time (a token; lanes.go says why).
	Solo chan struct{}
	// drained is closed once the instance is broken and its last call has returned: what a re-init
	// waits for.
	drained   chan struct{}
	drainOnce sync.Once
}

func newInstance(c *pkcs11.Ctx, gen uint64, h *moduleHandle) *Instance {
	in := &Instance{ctx: c, Gen: gen, h: h, drained: make(chan struct{})}
	if h != nil && h.solo {
		in.Solo = make(chan struct{}, 1)
	}
	return in
}

// enter registers a call on the instance that stuck-call accounting need not see (a bounded inspection);
// it fails once the instance is broken or retired. Calls on behalf of a caller use begin/end (stuck.go).
func (in *Instance) enter() bool {
	in.Inflight.Add(1)
	if in.Broken.Load() || in.retired.Load() {
		in.exit()
		return false
	}
	return true
}

func (in *Instance) exit() {
	if in.Inflight.Add(-1) != 0 {
		return
	}
	// The atomics order this against waitDrained: it sets broken, then reads inflight.
	if in.Broken.Load() {
		in.drainOnce.Do(func() { close(in.drained) })
	}
	if in.counted.Load() {
		in.reclaim()
	}
}

// waitDrained waits until the last call in the broken instance has returned, for at most grace or until
// ctx ends.
func (in *Instance) waitDrained(ctx context.Context, grace time.Duration) {
	if in.Inflight.Load() == 0 {
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-in.drained:
	case <-t.C:
	case <-ctx.Done():
	}
}

// reclaim runs once the stuck calls of a retired instance have all returned (a paused server resumed, a
// partition healed): the instance no longer holds threads, so it stops counting against
// max_retired_instances (or a device that hung a few times would stay down until a process restart), and
// it is finalised where that cannot touch a live instance: only once a load has shown that every load of
// this module is its own instance (p11-kit-client.so), never for one that may share its state across loads
// (libsofthsm2.so); without that evidence it is left loaded.
func (in *Instance) reclaim() {
	if !in.counted.CompareAndSwap(true, false) {
		return
	}
	h := in.h
	h.retired.Add(-1)
	h.reclaimed.Add(1)
	if !h.separate.Load() {
		return
	}
	go func() {
		_ = in.ctx.Finalize()
		in.ctx.Destroy()
	}()
}

// moduleHandle is the registry entry for one (path, env): the current instance plus the retired ones.
type moduleHandle struct {
	key  ModuleKey
	path string
	env  map[string]string
	refs int // guarded by registry.mu

	mu      sync.Mutex // serialises re-init
	Cur     atomic.Pointer[Instance]
	gen     atomic.Uint64
	retired atomic.Int64 // instances retired with calls stuck in them (until those calls return)
	// reclaimed counts retired instances whose stuck calls all returned.
	reclaimed atomic.Int64
	// separate: C_Initialize answered CKR_OK while a retired instance was still initialised, so every load
	// of this module is its own instance and finalising a drained retired one touches no other.
	separate atomic.Bool
	reinits  atomic.Int64
	pending  *initJob // an initialisation that timed out and may still finish
	loaded   atomic.Bool
	solo     bool // its instances carry one call at a time (lanes.go)
	// envAtLoad: the module reads its environment in C_GetFunctionList only (p11-kit-client), so its
	// C_Initialize — a round trip to a server that may hang — runs outside the env lock.
	envAtLoad bool
}

type initJob struct {
	done chan struct{}
	in   *Instance
	err  error
}

type registry struct {
	mu   sync.Mutex
	mods map[ModuleKey]*moduleHandle
}

var modules = &registry{mods: map[ModuleKey]*moduleHandle{}}

// acquire returns the shared handle for (path, env, lane), creating it (without loading) on first use.
func (r *registry) acquire(path string, env map[string]string, lane int) (*moduleHandle, error) {
	k, err := NewModuleKey(path, env)
	if err != nil {
		return nil, err
	}
	k.lane = lane
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.mods[k]
	if h == nil {
		h = &moduleHandle{key: k, path: path, env: env, envAtLoad: isP11KitClient(path)}
		r.mods[k] = h
	}
	h.refs++
	return h, nil
}

// release drops a reference; the last one finalises the instance if nothing is in flight on it.
func (r *registry) release(h *moduleHandle, timeout time.Duration) {
	r.mu.Lock()
	h.refs--
	last := h.refs == 0
	if last {
		delete(r.mods, h.key)
	}
	r.mu.Unlock()
	if !last {
		return
	}
	if in := h.Cur.Swap(nil); in != nil {
		finalizeBounded(in, timeout)
	}
}

// finalizeBounded finalises and unloads an idle instance; a busy one is left alone (finalising with calls in
// flight can abort the process in p11-kit's rpc transport).
func finalizeBounded(in *Instance, timeout time.Duration) bool {
	in.Broken.Store(true)
	if in.Inflight.Load() != 0 || in.retired.Load() {
		return false
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = in.ctx.Finalize()
		in.ctx.Destroy()
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		in.retired.Store(true)
		return false
	}
}

// shared reports whether several devices use this module instance.
func (h *moduleHandle) shared() bool {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	return h.refs > 1
}

// Current returns the usable instance, or nil.
func (h *moduleHandle) Current() *Instance {
	in := h.Cur.Load()
	if in == nil || in.Broken.Load() || in.retired.Load() {
		return nil
	}
	return in
}

// load makes a fresh instance under the env lock, with a deadline on C_Initialize (a paused p11-kit server
// blocks it). A load that times out keeps running; a later load adopts its result instead of piling up
// blocked threads.
func (h *moduleHandle) load(ctx context.Context, maxRetired int) (*Instance, error) {
	if h.pending != nil {
		select {
		case <-h.pending.done:
			j := h.pending
			h.pending = nil
			if j.err == nil {
				return j.in, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("module %s: an earlier C_Initialize is still blocked: %w", filepath.Base(h.path), ctx.Err())
		}
	}
	if maxRetired > 0 && int(h.retired.Load()) >= maxRetired {
		return nil, fmt.Errorf("module %s: %d instances retired with stuck calls (cap %d); restart the process to reclaim them",
			filepath.Base(h.path), h.retired.Load(), maxRetired)
	}
	select {
	case envLock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("module %s: waiting for the module-load lock: %w", filepath.Base(h.path), ctx.Err())
	}
	var once sync.Once
	unlock := func() { once.Do(func() { <-envLock }) }
	j := &initJob{done: make(chan struct{})}
	go func() {
		defer close(j.done)
		restore := setEnv(h.env)
		release := sync.OnceFunc(func() { restore(); unlock() })
		defer release()
		c := pkcs11.New(h.path)
		if c == nil {
			j.err = fmt.Errorf("module %s: cannot load (dlopen or C_GetFunctionList failed)", h.path)
			return
		}
		if h.envAtLoad {
			// Other loads need not wait for this one's C_Initialize: against a paused server it would hold
			// every other device's load until its init_timeout, and at Open make them all miss theirs.
			release()
		}
		err := c.Initialize()
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) && !h.loaded.Load() {
			// Another device already initialised this very library: both would see one token store.
			c.Destroy()
			j.err = fmt.Errorf("module %s is already initialised by another device in this process; "+
				"a module like libsofthsm2.so is one instance per file path: give each device its own copy of the file", h.path)
			return
		}
		if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			c.Destroy()
			j.err = fmt.Errorf("module %s: %w", filepath.Base(h.path), err)
			return
		}
		if err == nil && h.retired.Load() > 0 {
			h.separate.Store(true)
		}
		h.loaded.Store(true)
		j.in = newInstance(c, h.gen.Add(1), h)
	}()
	select {
	case <-j.done:
		return j.in, j.err
	case <-ctx.Done():
		// Let other modules load; this one's env was read at C_GetFunctionList / start of C_Initialize.
		unlock()
		h.pending = j
		return nil, fmt.Errorf("module %s: C_Initialize did not return: %w", filepath.Base(h.path), ctx.Err())
	}
}

// reinit replaces the current instance: finalise + initialise when nothing is in flight on it, otherwise,
// after policy.reinit_grace, retire it (never finalised, never used again; its calls move to the stuck-call
// account, within policy.max_stuck_calls) and load a fresh one. Caller holds h.mu.
func (h *moduleHandle) reinit(ctx context.Context, set *Options, log *slog.Logger) (*Instance, error) {
	grace, maxRetired := set.ReinitGrace, set.MaxRetired
	old := h.Cur.Load()
	if old != nil {
		old.Broken.Store(true)
		old.waitDrained(ctx, grace)
		if old.Inflight.Load() == 0 {
			finalizeBounded(old, grace)
		} else {
			if err := h.retire(old, set.MaxStuckCalls, log); err != nil {
				return nil, err // old stays current, broken: the device stays down; a later re-init tries again
			}
			h.retired.Add(1)
			old.counted.Store(true)
			if old.Inflight.Load() == 0 { // the last stuck call returned in between
				old.reclaim()
			}
		}
		h.Cur.Store(nil)
	}
	in, err := h.load(ctx, maxRetired)
	if err != nil {
		return nil, err
	}
	h.reinits.Add(1)
	h.Cur.Store(in)
	return in, nil
}

// setEnv applies env and returns a function restoring the previous values. Caller holds envLock.
func setEnv(env map[string]string) func() {
	type old struct {
		v  string
		ok bool
	}
	prev := make(map[string]old, len(env))
	for k, v := range env {
		ov, ok := os.LookupEnv(k)
		prev[k] = old{ov, ok}
		_ = os.Setenv(k, v)
	}
	return func() {
		for k, o := range prev {
			if o.ok {
				_ = os.Setenv(k, o.v)
			} else {
				_ = os.Unsetenv(k)
			}
		}
	}
}
