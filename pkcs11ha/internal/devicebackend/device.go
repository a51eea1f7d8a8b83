package devicebackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// Device is the PKCS#11 backend of one configured HSM: its module instance, and per partition a token, a
// logged-in session, a session pool and a key-handle cache. Everything that belongs to one module instance
// lives in a devState and is replaced whole on re-init, so no handle from before is ever used again.
type Device struct {
	idx   int
	Name  string
	cfg   DeviceSpec
	set   *Options
	Mod   *moduleHandle
	Parts []*devPartition // same order as Config.Partitions

	recoverMu sync.Mutex // one recovery at a time
	needInit  atomic.Bool
	lastErr   atomic.Pointer[LastError]
	// h: keysChanged re-checks key consistency after a (re)open; down tells the device's health monitor
	// that traffic proved it down.
	h   hooks
	log *slog.Logger
	// Stuck calls (stuck.go): calls stuck in instances this device's re-inits retired, the probe call
	// still blocked (if any), and why the last re-init was refused (the stuck-call cap), if it was.
	stuck        atomic.Int64
	probeBlocked atomic.Pointer[probeCall]
	capRefusal   atomic.Pointer[string]
	adminCalls   sync.WaitGroup // admin calls in flight (admin_device.go)

	// Lanes (lanes.go): a device whose module gets several instances has its lanes here (lane 0 = itself);
	// a lane has its owning device in home.
	home       *Device
	Lanes      []*Device
	laneFree   chan struct{}
	laneNext   atomic.Uint32
	laneBusy   atomic.Pointer[Instance] // the instance a call holds this lane on
	Recovering atomic.Bool              // the background recovery of lanes 1.. is running
}

// devPartition is one partition (token) on one device.
type devPartition struct {
	dev       *Device
	Cfg       *PartitionSpec
	pin       string // resolved once by Open; never printed
	St        atomic.Pointer[partState]
	credFatal atomic.Pointer[string] // set once a PIN was rejected: never logged in again
	logins    atomic.Int64           // C_Login attempts, for tests and metrics
	home      *devPartition          // a lane's partition: the owning device's, which holds the two above
	openErr   atomic.Pointer[error]  // outcome of the last open (nil error: opened), for Inspect

	// pinreload.go: a reloaded PIN (nil: pin), and a hash of the PIN the token refused, never tried again.
	newPIN   atomic.Pointer[string]
	rejected atomic.Pointer[[32]byte]
}

// partState is everything that belongs to one module instance for one partition.
type partState struct {
	in      *Instance
	slot    uint
	loginS  pkcs11.SessionHandle // persistent session keeping the token logged in
	Pool    *sessionPool
	loginMu sync.Mutex

	keysMu  sync.RWMutex
	keys    map[string]*KeyObject
	secrets map[string]*SecretObject // secret keys (secretkeys.go)
}

// LastError is the device's last failure as Status shows it.
type LastError struct {
	Msg   string
	Class errclass.Class
}

func (d *Device) setErr(err error) {
	if err == nil {
		return
	}
	d.owner().lastErr.Store(&LastError{Msg: err.Error(), Class: errclass.ClassOf(err)})
}

// NewDevice makes device i of settings s on the module registry's handle for its module and module_env,
// with its lanes (lanes.go); nothing is loaded yet.
func NewDevice(s *Settings, i int, log *slog.Logger) (*Device, error) {
	dc := s.Devices[i]
	h, err := modules.acquire(dc.Module, dc.ModuleEnv, 0)
	if err != nil {
		return nil, &errclass.ConfigError{Field: fmt.Sprintf("devices[%s].module", dc.Name), Msg: err.Error()}
	}
	d := &Device{idx: i, Name: dc.Name, cfg: dc, set: &s.Own, Mod: h, log: log}
	for pi := range s.Partitions {
		d.Parts = append(d.Parts, &devPartition{dev: d, Cfg: &s.Partitions[pi], pin: s.PINs[pi]})
	}
	if err := d.addLanes(lanesOf(dc, s.Own.P11KitInstances)); err != nil {
		d.Close(s.Own.CloseTimeout)
		return nil, &errclass.ConfigError{Field: fmt.Sprintf("devices[%s].module", dc.Name), Msg: err.Error()}
	}
	return d, nil
}

// Open brings the device up on its current (or a fresh) instance: resolve tokens, log in, list keys.
func (d *Device) Open(ctx context.Context) error {
	d.recoverMu.Lock()
	defer d.recoverMu.Unlock()
	return d.openLocked(ctx, false)
}

// recoverDevice re-initialises the module when the device was seen down. Shared instances (several devices
// on one module, as with a Luna client) are only re-initialised when no other device on them is serving;
// otherwise the device reopens sessions and logs in again on the current instance.
func (d *Device) recoverDevice(ctx context.Context, othersServing bool) error {
	d.recoverMu.Lock()
	defer d.recoverMu.Unlock()
	return d.openLocked(ctx, !othersServing)
}

func (d *Device) openLocked(ctx context.Context, reinit bool) error {
	in, err := d.instanceFor(ctx, reinit)
	if err != nil {
		return err
	}
	d.needInit.Store(false)
	var errs []error
	for _, p := range d.Parts {
		err := p.open(ctx, in)
		p.openErr.Store(&err)
		if err != nil {
			if errclass.ClassOf(err) == errclass.ClassDeviceDown {
				// e.g. the token is missing after C_Initialize against a dead server: only a re-init helps.
				d.needInit.Store(true)
			}
			errs = append(errs, err)
		}
	}
	d.h.onKeys()
	if len(errs) == len(d.Parts) {
		err := errs[0]
		d.setErr(err)
		return err
	}
	// Some partitions may be unusable (wrong PIN); the device still serves the others.
	return nil
}

// instanceFor returns the module instance to open the device on: the current one, or a freshly loaded
// one, or (reinit, when the device needs it) a re-initialised one. Its errors are device-down, and recorded.
func (d *Device) instanceFor(ctx context.Context, reinit bool) (*Instance, error) {
	d.Mod.mu.Lock()
	in := d.Mod.Current()
	var err error
	switch {
	case in == nil:
		if d.Mod.Cur.Load() != nil {
			in, err = d.Mod.reinit(ctx, d.set, d.log)
		} else {
			again := d.Mod.loaded.Load() // an earlier re-init failed half-way: this load is a re-init too
			in, err = d.Mod.load(ctx, d.set.MaxRetired)
			if err == nil {
				d.Mod.Cur.Store(in)
				if again {
					d.Mod.reinits.Add(1)
				}
			}
		}
	case reinit && d.needInit.Load():
		in, err = d.Mod.reinit(ctx, d.set, d.log)
	}
	d.Mod.mu.Unlock()
	d.noteRecovery(err)
	if err != nil {
		err = errclass.DownErr(d.Name, "", errclass.OpInitialize, err.Error())
		d.setErr(err)
		return nil, err
	}
	return in, nil
}

// open resolves the token by label or serial on instance in, logs in once and lists its keys.
func (p *devPartition) open(ctx context.Context, in *Instance) error {
	if why := p.owner().credFatal.Load(); why != nil {
		return &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpLogin, Class: errclass.ClassCredential, Err: errors.New(*why)}
	}
	if old := p.St.Load(); old != nil && old.in == in && ctx.Err() == nil {
		// Same instance: a soft recovery. Drop pooled sessions and re-login below on the same slot.
		p.St.Store(nil)
	}
	rec, ok := in.begin(ctx, p.dev)
	if !ok {
		return errclass.DownErr(p.dev.Name, p.Cfg.Name, errclass.OpSlotList, "module instance is re-initialising")
	}
	defer in.end(rec)
	c := in.ctx
	slots, err := c.GetSlotList(true)
	if err != nil {
		return errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpSlotList, err)
	}
	var slot uint
	var info pkcs11.TokenInfo
	found := false
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if p.isToken(ti) {
			slot, info, found = s, ti, true
			break
		}
	}
	if !found {
		// After a server dies C_Initialize still succeeds with no slots: the device is not up.
		return errclass.DownErr(p.dev.Name, p.Cfg.Name, errclass.OpTokenInfo, fmt.Sprintf("token %q not found (%d slots)", p.tokenName(), len(slots)))
	}
	size := poolSize(p.dev.set.SessionPoolSize, info.MaxSessionCount)
	ls, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpOpenSession, err)
	}
	st := &partState{in: in, slot: slot, loginS: ls, Pool: newSessionPool(in, slot, size)}
	if err := p.login(st); err != nil {
		_ = c.CloseSession(ls)
		return err
	}
	keys, err := listPrivateKeys(c, ls, "")
	if err != nil {
		return errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpFindObjects, err)
	}
	st.keys = make(map[string]*KeyObject, len(keys))
	for _, k := range keys {
		if _, dup := st.keys[k.Label]; !dup {
			st.keys[k.Label] = k
		}
	}
	secrets, err := listSecretKeys(c, ls, "")
	if err != nil {
		return errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpFindObjects, err)
	}
	st.secrets = make(map[string]*SecretObject, len(secrets))
	for _, k := range secrets {
		if _, dup := st.secrets[k.Label]; !dup {
			st.secrets[k.Label] = k
		}
	}
	st.Pool.warm()
	p.St.Store(st)
	return nil
}

// isToken reports whether ti is this partition's token on this device: by serial when one is configured
// (the device's token_serials, else the partition's token_serial), else by label.
func (p *devPartition) isToken(ti pkcs11.TokenInfo) bool {
	serial := p.Cfg.TokenSerial
	if s := p.dev.cfg.TokenSerials[p.Cfg.Name]; s != "" {
		serial = s
	}
	if serial != "" {
		return strings.TrimSpace(ti.SerialNumber) == serial
	}
	return strings.TrimSpace(ti.Label) == p.Cfg.TokenLabel
}

// poolSize is the session pool of one partition: policy.session_pool_size, capped so that the pool and the
// login session fit in the token's max session count (0 is "effectively infinite"; absurd values, such as
// "unavailable information", are no cap either).
func poolSize(want int, maxSessions uint) int {
	if m := int(maxSessions); m > 1 && m < 1<<20 && m-1 < want {
		return m - 1 // one for the login session
	}
	return want
}

func (p *devPartition) tokenName() string {
	if s := p.dev.cfg.TokenSerials[p.Cfg.Name]; s != "" {
		return "serial " + s
	}
	if p.Cfg.TokenSerial != "" {
		return "serial " + p.Cfg.TokenSerial
	}
	return p.Cfg.TokenLabel
}

// login logs the persistent session in. A rejected PIN is never tried again: PIN lockout on a real HSM
// locks the partition for every application.
func (p *devPartition) login(st *partState) error {
	st.loginMu.Lock()
	defer st.loginMu.Unlock()
	if why := p.owner().credFatal.Load(); why != nil {
		return &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpLogin, Class: errclass.ClassCredential, Err: errors.New(*why)}
	}
	p.owner().logins.Add(1)
	secret := p.secret()
	err := st.in.ctx.Login(st.loginS, pkcs11.CKU_USER, secret)
	if err == nil {
		return nil
	}
	de := errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpLogin, err).(*errclass.DeviceError)
	switch de.Class {
	case errclass.ClassNone: // CKR_USER_ALREADY_LOGGED_IN
		return nil
	case errclass.ClassCredential:
		why := fmt.Sprintf("C_Login: %s: PIN not retried until it changes", errclass.CKRName(de.Code))
		p.rejectPIN(secret)
		p.owner().credFatal.Store(&why)
	}
	return de
}

// keyFor returns the cached key object for label on st.
func (st *partState) key(label string) *KeyObject {
	st.keysMu.RLock()
	k := st.keys[label]
	st.keysMu.RUnlock()
	return k
}

// refreshKey looks label up again after a stale-handle error and checks the public key did not change.
func (p *devPartition) refreshKey(st *partState, s pkcs11.SessionHandle, label string, want []byte) (*KeyObject, error) {
	ks, err := listPrivateKeys(st.in.ctx, s, label)
	if err != nil {
		return nil, errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpFindObjects, err)
	}
	if len(ks) == 0 {
		return nil, &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpFindObjects, Class: errclass.ClassBusy, Err: fmt.Errorf("key %q is gone", label)}
	}
	if !bytes.Equal(ks[0].PubDER, want) {
		return nil, &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpFindObjects, Class: errclass.ClassBusy, Err: fmt.Errorf("key %q changed its public key", label)}
	}
	st.keysMu.Lock()
	st.keys[label] = ks[0]
	st.keysMu.Unlock()
	return ks[0], nil
}

// runHere executes op for its key (label, public key) on partition p on this (lane's) instance, with the
// session-level recovery of the error table: a broken session is dropped and the call retried once on a
// fresh one; a stale handle is looked up again; a lost login is restored. Device-down errors mark the
// device for re-init.
func (p *devPartition) runHere(ctx context.Context, op *Op) ([]byte, error) {
	st := p.St.Load()
	if st == nil {
		return nil, errclass.DownErr(p.dev.Name, p.Cfg.Name, errclass.OpOpenSession, "partition not open")
	}
	rec, ok := st.in.begin(ctx, p.dev)
	if !ok {
		if err := ctx.Err(); err != nil {
			return nil, err // waited for the instance past the call's deadline
		}
		return nil, errclass.DownErr(p.dev.Name, p.Cfg.Name, errclass.OpOpenSession, "module instance is re-initialising")
	}
	defer st.in.end(rec)
	retried := false
	for {
		out, err := p.runOnce(ctx, st, op)
		if err == nil {
			return out, nil
		}
		var de *errclass.DeviceError
		if !errors.As(err, &de) {
			return nil, err
		}
		switch de.Class {
		case errclass.ClassDeviceDown:
			if de.Code != 0 {
				// A real device error code (not our own verdict): stop using this instance now.
				p.dev.MarkInstanceDown(st.in)
				p.dev.h.onDown(err.Error())
			}
			p.dev.setErr(err)
			return nil, err
		case errclass.ClassSessionBroken, errclass.ClassHandleStale:
			if retried || ctx.Err() != nil {
				return nil, err
			}
		case errclass.ClassLoginLost:
			if retried || ctx.Err() != nil {
				return nil, err
			}
			if lerr := p.login(st); lerr != nil {
				return nil, lerr
			}
		default:
			return nil, err
		}
		retried = true
	}
}

func (p *devPartition) runOnce(ctx context.Context, st *partState, op *Op) ([]byte, error) {
	label := op.Label
	h, ok := st.handle(op)
	if !ok && !op.Kind.secret() {
		if k := p.lookupKey(ctx, st, label, op.PubDER); k != nil { // live pickup (admin_device.go)
			h, ok = k.priv, true
		}
	}
	if !ok {
		return nil, &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpFindObjects, Class: errclass.ClassBusy, Err: fmt.Errorf("key %q not on this device", label)}
	}
	s, err := st.Pool.get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpOpenSession, err)
	}
	out, step, err := op.exec(st.in.ctx, s, h)
	if err != nil {
		e := errclass.P11Err(p.dev.Name, p.Cfg.Name, step, err)
		var de *errclass.DeviceError
		if !errors.As(e, &de) {
			var me *errclass.MechanismError
			if errors.As(e, &me) {
				me.Device = p.dev.Name
			}
			st.Pool.put(s) // refused before reaching the token's state (e.g. unsupported mechanism)
			return nil, e
		}
		switch de.Class {
		case errclass.ClassSessionBroken, errclass.ClassDeviceDown, errclass.ClassBusy:
			st.Pool.discard(s)
		case errclass.ClassHandleStale:
			if rerr := p.refresh(st, s, op); rerr != nil {
				st.Pool.discard(s)
				return nil, rerr
			}
			st.Pool.put(s)
		default:
			st.Pool.put(s)
		}
		return nil, e
	}
	if ctx.Err() != nil {
		// The caller gave up on this call (abandoned or lost a hedge race): the session is fine, but keep the
		// rule simple and safe — a session whose call outlived its deadline is never pooled again.
		st.Pool.discard(s)
	} else {
		st.Pool.put(s)
	}
	return out, nil
}

// probeTokens checks the device: re-initialise when it was seen down, then C_GetTokenInfo for each open
// partition.
func (d *Device) probeTokens(ctx context.Context, othersServing bool) error {
	if err := d.RecoverIfNeeded(ctx, othersServing); err != nil {
		return err
	}
	served := 0
	for _, p := range d.Parts {
		st := p.St.Load()
		if st == nil {
			continue
		}
		if err := d.probeToken(ctx, st); err != nil {
			e := errclass.P11Err(d.Name, p.Cfg.Name, errclass.OpTokenInfo, err)
			if errclass.ClassOf(e) == errclass.ClassDeviceDown {
				d.MarkInstanceDown(st.in)
			}
			d.setErr(e)
			return e
		}
		served++
	}
	if served == 0 {
		return errclass.DownErr(d.Name, "", errclass.OpTokenInfo, "no partition is open")
	}
	return nil
}

// MarkInstanceDown records that the device needs its module re-initialised. An instance of its own stops
// taking calls at once; an instance shared with other devices (one Luna client for several appliances)
// keeps serving them, and recovery escalates from new sessions to a re-init only once they are idle or down.
func (d *Device) MarkInstanceDown(in *Instance) {
	d.needInit.Store(true)
	if !d.Mod.shared() {
		in.Broken.Store(true)
	}
	if d.owner().Lanes != nil {
		d.lanesDown()
	}
}

// onLiveInstance reports whether p is open on its device's current module instance. The state of an
// instance since broken or replaced stays until a re-init opens the partition again (a re-init that fails
// keeps it), and says nothing then.
func (p *devPartition) onLiveInstance() bool {
	st := p.St.Load()
	return st != nil && st.in == p.dev.Mod.Current()
}

// AnyPartitionClosed reports whether a partition that could work (PIN accepted) is not open.
func (d *Device) AnyPartitionClosed() bool {
	for _, p := range d.Parts {
		if p.St.Load() == nil && p.owner().credFatal.Load() == nil {
			return true
		}
	}
	return false
}

// Close releases the device's module reference (the module is finalised by the last user when idle).
func (d *Device) Close(timeout time.Duration) {
	d.waitAdmin(timeout)
	d.closeLanes(timeout)
	modules.release(d.Mod, timeout)
}
