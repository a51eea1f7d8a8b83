package softhsmtest

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DeviceSpec describes one device of a topology.
type DeviceSpec struct {
	Name, Region string
	// Delay is the one-way delay the relay adds in each direction (SetDelay changes it at run time).
	Delay time.Duration
	// InProcess: no server and no relay; the device is a private copy of libsofthsm2.so, loaded in the
	// client's process with its own SOFTHSM2_CONF. Delay and the fault verbs do not apply.
	InProcess bool

	// Per-device faults in the key material, for consistency and credential scenarios:
	MissingKeys   []string          // key labels not imported on this device
	DifferentKeys []string          // key labels imported with a different key (same label, id and kind)
	PINOverride   map[string]string // partition name -> the PIN this device's token really has (configs keep the normal PIN)
}

// DefaultTopology is two devices in eastus (eastus-1, eastus-2) without delay and two in westus
// (westus-1, westus-2) behind a one-way delay of drDelay (use ~10ms).
func DefaultTopology(drDelay time.Duration) []DeviceSpec {
	return []DeviceSpec{
		{Name: "eastus-1", Region: "eastus"},
		{Name: "eastus-2", Region: "eastus"},
		{Name: "westus-1", Region: "westus", Delay: drDelay},
		{Name: "westus-2", Region: "westus", Delay: drDelay},
	}
}

// Device is one SoftHSM device of a Topology: a `p11-kit server` process group behind a relay, or, if
// InProcess, a private copy of libsofthsm2.so. The exported fields are set by Start and never change.
type Device struct {
	Name, Region string
	InProcess    bool
	Dir          string // the device's directory
	ConfPath     string // its softhsm2.conf
	TokenDir     string // SoftHSM token directory (one subdirectory per partition)
	LogPath      string // stdout and stderr of its server processes
	Socket       string // the relay socket clients connect to (P11_KIT_SERVER_ADDRESS=unix:path=<Socket>); "" if InProcess; absent while the device is killed or stopped
	ServerSocket string // the p11-kit server's own socket behind the relay; "" if InProcess
	// ModulePath is the PKCS#11 module a client loads for this device: p11-kit-client.so, or the private
	// copy of libsofthsm2.so of an InProcess device.
	ModulePath string
	// ModuleEnv is what pkcs11ha's module_env must be for this device: P11_KIT_SERVER_ADDRESS, or
	// SOFTHSM2_CONF for an InProcess device.
	ModuleEnv map[string]string
	// Keys are the keys this device's tokens really hold (label -> key): the topology's keys, without
	// MissingKeys and with the different keys of DifferentKeys.
	Keys map[string]crypto.Signer
	// Certificates are the certificates beside those keys with Options.Certificates (label -> DER), else
	// empty.
	Certificates map[string][]byte
	// SecretKeys are the values of the secret keys this device's tokens hold (label -> value), like Keys.
	SecretKeys map[string][]byte
	// PINs are the user PINs this device's tokens really have (partition name -> PIN).
	PINs map[string]string
	// Serials are the serial numbers of this device's tokens (partition name -> serial). Every token of
	// every device has its own serial, as partitions on different HSMs do.
	Serials map[string]string

	tools       Tools
	tokenLabels []string
	relay       *relay
	logf        func(format string, args ...any)

	opMu   sync.Mutex // serialises Start, Stop, Kill, Restart, Pause, Resume and close
	mu     sync.Mutex // guards the fields below
	proc   *proc
	paused bool
	closed bool
}

func (d *Device) errInProcess(verb string) error {
	return fmt.Errorf("softhsmtest: device %s: %s not supported for in-process device", d.Name, verb)
}

// Start starts the device's server if it is not running and waits until it accepts connections.
func (d *Device) Start(ctx context.Context) error {
	if d.InProcess {
		return d.errInProcess("Start")
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	return d.startLocked(ctx)
}

func (d *Device) startLocked(ctx context.Context) error {
	d.mu.Lock()
	closed, p := d.closed, d.proc
	d.mu.Unlock()
	if closed {
		return fmt.Errorf("softhsmtest: device %s: %w", d.Name, errClosed)
	}
	if p != nil && !p.exited() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	_ = os.Remove(d.ServerSocket) // stale after a SIGKILL
	args := []string{"server", "-f", "-n", d.ServerSocket, "--provider", d.tools.SoftHSMModule}
	for _, l := range d.tokenLabels {
		args = append(args, "pkcs11:token="+uriEscape(l))
	}
	p, err := startProc(d.tools.P11Kit, args, envWith(map[string]string{"SOFTHSM2_CONF": d.ConfPath}), d.LogPath)
	if err != nil {
		return fmt.Errorf("softhsmtest: device %s: %w", d.Name, err)
	}
	if err := waitListening(ctx, p, d.ServerSocket); err != nil {
		_ = p.kill(5 * time.Second)
		tail := logTail(d.LogPath, 2048)
		if d.logf != nil {
			d.logf("softhsmtest: device %s: server log %s:\n%s", d.Name, d.LogPath, tail)
		}
		return fmt.Errorf("softhsmtest: device %s: p11-kit server %s (log %s: %q)", d.Name, err, d.LogPath, tail)
	}
	d.mu.Lock()
	d.proc, d.paused = p, false
	d.mu.Unlock()
	if d.relay != nil {
		if err := d.relay.listen(); err != nil {
			return fmt.Errorf("softhsmtest: device %s: relay: %w", d.Name, err)
		}
	}
	return nil
}

// Kill SIGKILLs the device's process group (the p11-kit-remote process the server runs for each
// connection, then the server, so that no orphan is left) and returns once they have all been reaped.
// The relay stops listening until the device is started again, so that new clients are refused as by
// a dead server (p11-kit-client then initialises with no slot), while clients connected through the
// relay see their connection closed (CKR_DEVICE_ERROR). Killing a device that is not running is a no-op.
func (d *Device) Kill() error {
	if d.InProcess {
		return d.errInProcess("Kill")
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	return d.killLocked()
}

func (d *Device) killLocked() error {
	return d.endLocked(func(p *proc) error { return p.kill(10 * time.Second) })
}

// endLocked ends the running server with end (after the relay stops listening) and forgets it. A device
// that is not running is left alone.
func (d *Device) endLocked(end func(*proc) error) error {
	d.mu.Lock()
	p := d.proc
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	if d.relay != nil {
		d.relay.unlisten()
	}
	err := end(p)
	d.mu.Lock()
	d.proc, d.paused = nil, false
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("softhsmtest: device %s: %w", d.Name, err)
	}
	return nil
}

// Stop stops the device gracefully (SIGTERM to the group, SIGKILL after 2 s); the relay stops listening
// as with Kill.
func (d *Device) Stop() error {
	if d.InProcess {
		return d.errInProcess("Stop")
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	return d.endLocked(func(p *proc) error { return p.terminate(2 * time.Second) })
}

// Restart kills the device if it is running, starts it again on the same ServerSocket and waits until
// it accepts connections. Clients must load their module again (C_Finalize + C_Initialize, or a fresh
// instance) to reach it.
func (d *Device) Restart(ctx context.Context) error {
	if d.InProcess {
		return d.errInProcess("Restart")
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if err := d.killLocked(); err != nil {
		return err
	}
	return d.startLocked(ctx)
}

// Pause SIGSTOPs the device's process group and returns once every member has stopped: calls in
// flight and new calls block until Resume.
func (d *Device) Pause() error {
	if d.InProcess {
		return d.errInProcess("Pause")
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	p, err := d.running()
	if err != nil {
		return err
	}
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	d.mu.Lock()
	d.paused = true
	d.mu.Unlock()
	return waitGroupState(p.pid, true, 5*time.Second)
}

// Resume SIGCONTs the device's process group.
func (d *Device) Resume() error {
	if d.InProcess {
		return d.errInProcess("Resume")
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	p, err := d.running()
	if err != nil {
		return err
	}
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	d.mu.Lock()
	d.paused = false
	d.mu.Unlock()
	return waitGroupState(p.pid, false, 5*time.Second)
}

func (d *Device) running() (*proc, error) {
	d.mu.Lock()
	p := d.proc
	d.mu.Unlock()
	if p == nil || p.exited() {
		return nil, fmt.Errorf("softhsmtest: device %s: %w", d.Name, errNotRunning)
	}
	return p, nil
}

// Running reports whether the device's server process is alive (paused counts as running).
func (d *Device) Running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc != nil && !d.proc.exited()
}

// Paused reports whether the device is paused (SIGSTOP) and still running.
func (d *Device) Paused() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.paused && d.proc != nil && !d.proc.exited()
}

// PID is the server's process id (also its process group id), or 0 when it is not running.
func (d *Device) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil || d.proc.exited() {
		return 0
	}
	return d.proc.pid
}

// Pass makes the relay forward bytes again (after the current delay): held bytes are delivered, new
// connections accepted.
func (d *Device) Pass() error {
	if d.relay == nil {
		return d.errInProcess("Pass")
	}
	d.relay.setMode(modePass)
	return nil
}

// SetDelay delays every chunk of bytes by toServer (client to device) or toClient (device to client),
// keeping their order. It affects new and existing connections and bytes already queued. One round trip
// then takes at least toServer+toClient; a signature through p11-kit takes about three.
func (d *Device) SetDelay(toServer, toClient time.Duration) error {
	if d.relay == nil {
		return d.errInProcess("SetDelay")
	}
	d.relay.setDelay(toServer, toClient)
	return nil
}

// Hang makes the relay accept and keep connections but forward nothing: bytes, and a peer's close, are
// held until Pass (or dropped by Down or Reset). Calls block, as with a device that stopped answering on
// the network.
func (d *Device) Hang() error {
	if d.relay == nil {
		return d.errInProcess("Hang")
	}
	d.relay.setMode(modeHang)
	return nil
}

// HoldConnections makes the relay hold the bytes of every connection open now, as Hang does, while new
// connections pass: calls in flight on a client's current module instance block (a connection the network
// black-holed), while a fresh instance of the module reaches the device. Pass (or any other mode change)
// releases them.
func (d *Device) HoldConnections() error {
	if d.relay == nil {
		return d.errInProcess("HoldConnections")
	}
	d.relay.holdCurrent()
	return nil
}

// CorruptSignatures makes the relay flip one bit in the signature of every C_Sign reply from the device
// (on) or pass them untouched again (off): a device that returns wrong signatures, as a faulty RSA-CRT
// computation would. Other replies are not touched.
func (d *Device) CorruptSignatures(on bool) error {
	if d.relay == nil {
		return d.errInProcess("CorruptSignatures")
	}
	d.relay.corrupt.Store(on)
	return nil
}

// SignReplies counts the C_Sign replies the device's relay carried since it started: those with a
// signature, and those answering a length query (a NULL buffer).
func (d *Device) SignReplies() (data, query int64) {
	if d.relay == nil {
		return 0, 0
	}
	return d.relay.signs.data.Load(), d.relay.signs.query.Load()
}

// Down closes every relayed connection and closes new connections as soon as they are accepted, until
// Pass. Calls fail at once (p11-kit-client reports CKR_DEVICE_ERROR).
func (d *Device) Down() error {
	if d.relay == nil {
		return d.errInProcess("Down")
	}
	d.relay.setMode(modeDown)
	return nil
}

// Reset closes every current relayed connection once (a RST on TCP legs, a close on unix sockets) and
// keeps accepting new ones.
func (d *Device) Reset() error {
	if d.relay == nil {
		return d.errInProcess("Reset")
	}
	d.relay.reset()
	return nil
}

// Connections is the number of client connections the relay carries now (0 for InProcess devices).
func (d *Device) Connections() int {
	if d.relay == nil {
		return 0
	}
	return d.relay.connections()
}

// close stops the relay (closing every client connection, which also releases calls blocked in a hang)
// and kills the process group. Idempotent.
func (d *Device) close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	if d.relay != nil {
		d.relay.close()
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	err := d.killLocked()
	if d.ServerSocket != "" {
		_ = os.Remove(d.ServerSocket)
	}
	return err
}

// waitGroupState waits until every live member of group pgid is stopped (stopped=true) or none is.
func waitGroupState(pgid int, stopped bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		states, err := groupStates(pgid, false)
		if err != nil {
			return nil // no /proc: nothing to wait for
		}
		done := true
		for _, st := range states {
			isStopped := st == "T" || st == "t"
			if isStopped != stopped {
				done = false
				break
			}
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("softhsmtest: process group %d: states %v after %v", pgid, states, timeout)
		}
		time.Sleep(wait)
	}
}

// uriEscape percent-encodes a PKCS#11 URI attribute value (RFC 7512), keeping unreserved characters.
func uriEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

var errClosed = errors.New("softhsmtest: topology closed")
