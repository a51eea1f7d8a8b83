package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudflare/tableflip"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/handover"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// Hot upgrade (docs/ARCHITECTURE.md, "Hot upgrade"; docs/upgrades.md). tableflip starts the new process
// with the listening sockets, waits for it to be ready (or to exit, or to time out: the old process then
// keeps serving) and writes server.pid_file; the connections and the PKCS#11 front end's state follow
// over a handover channel (internal/handover) that the old process passes along with the sockets.

// handoverFile names the new process's end of the handover channel among the inherited files.
const handoverFile = "hsm-ha-proxy-handover"

// ackTimeout bounds the old process's wait for the new one to confirm it took every connection.
const ackTimeout = 10 * time.Second

// upgrader is serve's side of hot upgrades.
type upgrader struct {
	tf      *tableflip.Upgrader
	log     *slog.Logger
	pidFile string
	in      *handover.Conn // from the old process; nil on a first start
	hello   handover.Hello // what the old process said

	busy     atomic.Bool  // an upgrade is being tried
	upgraded atomic.Bool  // this process handed over to a new one
	handed   atomic.Int64 // connections handed over
}

// newUpgrader takes what an old process passed (the listeners, then, through listen) and reads its hello.
// A hello of another version makes this process exit before it serves: the old one keeps serving.
func newUpgrader(sc sidecarconfig.ServerConfig, logger *slog.Logger) (*upgrader, error) {
	tf, err := tableflip.New(tableflip.Options{PIDFile: sc.PIDFile, UpgradeTimeout: sc.UpgradeDeadline()})
	if err != nil {
		return nil, fmt.Errorf("hot upgrade support: %w", err)
	}
	u := &upgrader{tf: tf, log: logger, pidFile: sc.PIDFile}
	if !tf.HasParent() {
		return u, nil
	}
	f, err := tf.File(handoverFile)
	if err != nil || f == nil {
		logger.Warn("upgrade: the old process passed no handover channel: its connections will not follow", "err", err)
		return u, nil
	}
	hc, err := handover.Open(f)
	if err != nil {
		return nil, err
	}
	_ = hc.SetDeadline(time.Now().Add(5 * time.Second))
	m, err := hc.Recv()
	_ = hc.SetDeadline(time.Time{})
	if err != nil || m.Kind != handover.KindHello {
		hc.Close()
		return nil, fmt.Errorf("upgrade: no hello from the old process (%v)", err)
	}
	if err := json.Unmarshal(m.Body, &u.hello); err != nil || u.hello.Version != handover.Version {
		hc.Close()
		return nil, fmt.Errorf("upgrade: the old process speaks handover version %d, this binary %d: not taking over (restart instead)",
			u.hello.Version, handover.Version)
	}
	u.in = hc
	return u, nil
}

func (u *upgrader) hasParent() bool { return u.tf.HasParent() }

// inheritsPKCS11 tells whether PKCS#11 connections and object handles are coming from an old process.
func (u *upgrader) inheritsPKCS11() bool { return u.in != nil && u.hello.PKCS11 }

// handedOver is how many connections this process passed to a new one.
func (u *upgrader) handedOver() int64 { return u.handed.Load() }

// listen returns the listener (network, addr) an old process passed, adopted by open, or a new one from
// open(nil); either way it is registered so that the next upgrade passes it on.
func (u *upgrader) listen(network, addr string, open func(inherited net.Listener) (net.Listener, error)) (net.Listener, error) {
	inh, err := u.tf.Listener(network, addr)
	if err != nil {
		return nil, err
	}
	ln, err := open(inh)
	if err != nil {
		if inh != nil {
			inh.Close()
		}
		return nil, err
	}
	tl, ok := ln.(tableflip.Listener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("listener %s %s cannot be passed on (%T)", network, addr, ln)
	}
	if err := u.tf.AddListener(network, addr, tl); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// ready says this process serves: it writes server.pid_file, tells the old process (which then hands over)
// and systemd. When the old process was ready, this one first waits to be ready too (every partition has
// an up device holding its keys): past server.upgrade_timeout the old one kills it and keeps serving.
func (u *upgrader) ready(ctx context.Context, cl *pkcs11ha.Cluster) error {
	if u.hello.ParentReady {
		for !cl.Ready() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	if err := u.tf.Ready(); err != nil {
		return err
	}
	if err := sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid())); err != nil {
		u.log.Warn("telling systemd we are ready failed", "err", err)
	}
	return nil
}

// start tries an upgrade: a new handover channel, whose first message is hello, then tableflip's start of
// the new process. nil error: the new process is ready and waits for the connections on the returned
// channel; this process must hand them over and exit. Otherwise this process keeps serving.
func (u *upgrader) start(hello handover.Hello) (*handover.Conn, error) {
	if !u.busy.CompareAndSwap(false, true) {
		return nil, errors.New("an upgrade is already under way")
	}
	defer u.busy.Store(false)
	pf, cf, err := handover.Pair()
	if err != nil {
		return nil, err
	}
	hc, err := handover.Open(pf)
	if err != nil {
		cf.Close()
		return nil, err
	}
	err = hc.Send(handover.KindHello, hello, nil)
	if err == nil {
		err = u.tf.AddFile(handoverFile, cf)
	}
	cf.Close()
	if err == nil {
		err = u.upgradeAfterParent()
	}
	if err != nil {
		hc.Close()
		return nil, err
	}
	u.upgraded.Store(true)
	return hc, nil
}

// upgradeAfterParent is tableflip's Upgrade once this process's own old process has exited: tableflip
// refuses an upgrade before it has seen that exit, which it learns a moment after the old process is gone
// (an upgrade right after another, as `hsm-ha-proxy upgrade` run twice does).
func (u *upgrader) upgradeAfterParent() error {
	ctx, cancel := context.WithTimeout(context.Background(), parentExitWait)
	defer cancel()
	if err := u.tf.WaitForParent(ctx); err != nil && ctx.Err() != nil {
		return errors.New("the previous process is still handing over; try again")
	}
	for {
		err := u.tf.Upgrade()
		if err == nil || !strings.Contains(err.Error(), "parent hasn't exited") || ctx.Err() != nil {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// parentExitWait bounds how long an upgrade waits for the previous one's old process to exit.
const parentExitWait = 30 * time.Second

// receive adopts what the old process hands over: the PKCS#11 object handles (then the PKCS#11 door
// serves), its PKCS#11 connections with their state, its idle HTTP connections; then it confirms.
func (u *upgrader) receive(ctx context.Context, s *sidecar) {
	startP11 := func(objects []byte) { s.p11.start(ctx, s.cfg, s.cl, s.srv, s.log, s.reg, objects) }
	defer startP11(nil) // whatever happened, the door serves now
	if u.in == nil {
		return
	}
	hc := u.in
	defer hc.Close()
	stop := context.AfterFunc(ctx, func() { hc.Close() })
	defer stop()
	var np, nh int
	for {
		m, err := hc.Recv()
		if err != nil {
			s.log.Warn("upgrade: the handover channel ended early", "pkcs11_connections", np, "http_connections", nh, "err", err)
			return
		}
		switch m.Kind {
		case handover.KindPKCS11Objects:
			startP11(m.Body)
		case handover.KindPKCS11Conn:
			if u.adoptPKCS11(s, m) {
				np++
			}
		case handover.KindHTTPConn:
			if err := s.srv.Adopt(m.File); err != nil {
				s.log.Error("upgrade: an HTTP connection could not be adopted", "err", err)
			} else {
				nh++
			}
		case handover.KindDone:
			startP11(nil)
			if err := hc.Send(handover.KindDone, struct{}{}, nil); err != nil {
				s.log.Warn("upgrade: confirming the handover failed", "err", err)
			}
			s.log.Info("upgrade: connections taken over", "pkcs11_connections", np, "http_connections", nh)
			return
		default:
			if m.File != nil {
				m.File.Close()
			}
			s.log.Warn("upgrade: unknown handover message ignored", "kind", string(m.Kind))
		}
	}
}

// adoptPKCS11 serves a PKCS#11 connection the old process handed over.
func (u *upgrader) adoptPKCS11(s *sidecar, m handover.Message) bool {
	fe := s.p11.server()
	if fe == nil {
		m.File.Close()
		s.log.Error("upgrade: a PKCS#11 connection was closed: server.pkcs11 is off in this process's config")
		return false
	}
	if err := fe.Adopt(m.File, m.Body); err != nil {
		s.log.Error("upgrade: a PKCS#11 connection could not be adopted and was closed", "err", err)
		return false
	}
	return true
}

// finish ends upgrade support at exit. The pid file is removed unless another process now serves.
func (u *upgrader) finish() {
	u.tf.Stop()
	if u.upgraded.Load() || u.pidFile == "" {
		return
	}
	if b, err := os.ReadFile(u.pidFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		_ = os.Remove(u.pidFile)
	}
}

// abandon ends a process that never served. The new process of an upgrade leaves everything alone:
// tableflip's Stop would remove the sockets the old process still serves on.
func (u *upgrader) abandon() {
	if !u.hasParent() {
		u.tf.Stop()
	}
}

// upgrade is SIGUSR2: start the new process; once it is ready, hand everything over and stop.
func (s *sidecar) upgrade(ctx context.Context, stop context.CancelFunc) {
	hello := handover.Hello{Version: handover.Version, ParentReady: s.cl.Ready(), PKCS11: s.p11 != nil}
	s.log.Info("SIGUSR2: upgrading: starting the new process", "executable", os.Args[0])
	began := time.Now()
	hc, err := s.up.start(hello)
	if err != nil {
		s.log.Error("upgrade failed: this process keeps serving", "err", err)
		return
	}
	s.log.Info("upgrade: the new process is ready: handing over", "start_ms", time.Since(began).Milliseconds())
	s.handOver(ctx, hc)
	// The KMS door's gRPC calls in flight finish here; the API server's client reconnects to the same
	// socket, now the new process's.
	s.kms.keepSocket()
	stop()
}

// handOver passes both doors' connections, tells the new process it has everything and waits for its
// confirmation (it has told systemd it is the main process by then).
func (s *sidecar) handOver(ctx context.Context, hc *handover.Conn) {
	defer hc.Close()
	began := time.Now()
	var wg sync.WaitGroup
	var np, nh int
	if fe := s.p11.server(); fe != nil {
		wg.Go(func() {
			var err error
			if np, err = fe.HandOver(ctx, hc); err != nil {
				s.log.Error("upgrade: PKCS#11 connections not handed over", "err", err)
			}
		})
	}
	wg.Go(func() {
		var err error
		if nh, err = s.srv.HandOver(ctx, hc); err != nil {
			s.log.Error("upgrade: HTTP connections not handed over", "err", err)
		}
	})
	wg.Wait()
	s.up.handed.Store(int64(np + nh))
	if err := hc.Send(handover.KindDone, struct{}{}, nil); err != nil {
		s.log.Error("upgrade: ending the handover failed", "err", err)
		return
	}
	_ = hc.SetDeadline(time.Now().Add(ackTimeout))
	if m, err := hc.Recv(); err != nil || m.Kind != handover.KindDone {
		s.log.Warn("upgrade: the new process did not confirm the handover", "err", err)
	}
	s.log.Info("upgrade: handed over; stopping", "pkcs11_connections", np, "http_connections", nh,
		"handover_ms", float64(time.Since(began).Microseconds())/1000)
}

// pinExecutable makes a hot upgrade start the binary at the path this process was started as, resolved
// once now (tableflip re-executes os.Args[0]): a relative path or a PATH lookup could name another file
// later. Symbolic links are kept, so that a link switched to a new version starts that version.
func pinExecutable(logger *slog.Logger) {
	exe := os.Args[0]
	var err error
	if strings.Contains(exe, "/") {
		exe, err = filepath.Abs(exe)
	} else {
		exe, err = exec.LookPath(exe)
		if err == nil {
			exe, err = filepath.Abs(exe)
		}
	}
	if err != nil {
		if exe, err = os.Executable(); err != nil {
			logger.Warn("cannot tell which binary is running: a hot upgrade may not start the right one", "err", err)
			return
		}
	}
	os.Args[0] = exe
}
