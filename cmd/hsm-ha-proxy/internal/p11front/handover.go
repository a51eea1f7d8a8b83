package p11front

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/handover"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
)

// HandOver passes the front end to the new process of a hot upgrade (docs/ARCHITECTURE.md, "Hot
// upgrade"): it stops accepting (the listener is closed; the caller has kept its socket file for the new
// process, which accepts on the same socket), stops every connection at a frame boundary once the calls
// it has in flight are answered, then sends the object handles and each connection's socket with its
// state. A connection still busy after the grace period has its calls cancelled, as at shutdown; one that
// cannot be sent is closed (its application sees what a restart shows it). It returns how many
// connections were handed over. Serve returns once ctx ends, after HandOver.
func (s *Server) HandOver(ctx context.Context, send handover.Sender) (int, error) {
	select {
	case <-s.started:
	default:
		return 0, errors.New("p11front: HandOver before Serve")
	}
	if !s.handingOver.CompareAndSwap(false, true) {
		return 0, errors.New("p11front: HandOver called twice")
	}
	began := time.Now()
	unixsock.KeepSocket(s.ln)
	s.ln.Close()
	<-s.acceptDone
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.requestHandover()
	}
	s.waitConns(ctx, conns)
	if err := send.Send(handover.KindPKCS11Objects, s.objs.export(), nil); err != nil {
		s.closeAll(conns)
		return 0, fmt.Errorf("p11front: handing over the object handles: %w", err)
	}
	n := 0
	for _, c := range conns {
		if c.exported == nil {
			continue // it ended (the application went away) or did not stop in time
		}
		if err := c.sendTo(send); err != nil {
			c.log.Error("PKCS#11 connection not handed over: closing it", "err", err)
			continue
		}
		n++
	}
	s.log.Info("PKCS#11 front end handed over", "connections", n, "of", len(conns),
		"quiesce_ms", float64(time.Since(began).Microseconds())/1000)
	return n, nil
}

// waitConns waits for every connection to stop (handed over or ended) within the grace period, then
// cancels the calls still running and waits a little more; a connection still running after that is
// left to Serve's shutdown.
func (s *Server) waitConns(ctx context.Context, conns []*conn) {
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		for _, c := range conns {
			select {
			case <-c.done:
			case <-t.C:
				return false
			case <-ctx.Done():
				return false
			}
		}
		return true
	}
	if wait(s.opts.ShutdownGrace) {
		return
	}
	s.log.Warn("PKCS#11 front end: calls still running when the handover's grace period ran out: cancelling them")
	s.cancelBase()
	wait(forcedDrain)
}

// closeAll closes the connections that stopped for a handover that failed.
func (s *Server) closeAll(conns []*conn) {
	for _, c := range conns {
		if c.exported != nil {
			c.nc.Close()
		}
	}
}

// sendTo sends the connection's socket and state, then closes this process's descriptor of it.
func (c *conn) sendTo(send handover.Sender) error {
	defer c.nc.Close()
	uc, ok := c.nc.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("p11front: %T is not a unix connection", c.nc)
	}
	f, err := uc.File()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := send.Send(handover.KindPKCS11Conn, c.exported, f); err != nil {
		return err
	}
	c.s.m.sessions.Sub(float64(len(c.exported.Sessions)))
	return nil
}

// ImportObjects takes the object handles of the old process of a hot upgrade (handover.KindPKCS11Objects),
// before Serve: every handle an application holds keeps naming the same key. The objects of each partition's
// keys are built at once, so that an adopted connection's handles are valid from its first call.
func (s *Server) ImportObjects(body []byte) error {
	var st objectsState
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("p11front: object handles: %w", err)
	}
	if err := s.objs.restore(&st); err != nil {
		return err
	}
	for _, p := range s.opts.Partitions {
		if infos, err := s.be.Keys(p); err == nil {
			s.objs.objectsOf(p, infos)
		}
		if infos, err := s.be.SecretKeys(p); err == nil {
			s.objs.secretObjectsOf(p, infos)
		}
	}
	return nil
}

// Adopt serves a connection handed over by the old process of a hot upgrade (handover.KindPKCS11Conn):
// its socket f (closed here) and its state. The peer is identified again from the socket (SO_PEERCRED) and
// must be the uid the state names; the connection is closed otherwise. Serve must be running, or about to.
func (s *Server) Adopt(f *os.File, body []byte) error {
	nc, err := unixsock.Adopt(f, s.started)
	if err != nil {
		return fmt.Errorf("p11front: %w", err)
	}
	var st connState
	if err := json.Unmarshal(body, &st); err != nil {
		nc.Close()
		return fmt.Errorf("p11front: adopted connection state: %w", err)
	}
	c := s.makeConn(nc)
	if err := c.restore(&st); err != nil {
		nc.Close()
		return err
	}
	if !s.track(c) {
		nc.Close()
		return errors.New("p11front: shutting down; adopted connection closed")
	}
	s.m.sessions.Add(float64(len(st.Sessions)))
	c.log.Debug("PKCS#11 connection adopted", "sessions", len(st.Sessions), "pending_bytes", len(st.Pending))
	s.connWG.Add(1)
	go func() {
		defer s.connWG.Done()
		c.serve()
	}()
	return nil
}

// waitFrame waits until the next frame's first byte is there, and tells whether the connection is to be
// handed over instead (what was read stays buffered and goes along). A handover requested while it waits
// wakes it (requestHandover).
func (c *conn) waitFrame(br *bufio.Reader) bool {
	c.hmu.Lock()
	if c.handover || br.Buffered() > 0 {
		defer c.hmu.Unlock()
		return c.handover
	}
	c.idle = true
	c.hmu.Unlock()
	_, err := br.Peek(1)
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.idle = false
	var ne net.Error
	timedOut := errors.As(err, &ne) && ne.Timeout()
	// The peer gone (EOF, reset) is no connection to hand over: the frame loop reads the error and ends it.
	return c.handover && (err == nil || timedOut)
}

// requestHandover makes the reader stop before its next frame: at once if it is waiting for one (an expired
// read deadline wakes it; nothing is consumed), else once the frame it is reading is served.
func (c *conn) requestHandover() {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.handover = true
	if c.idle {
		_ = c.nc.SetReadDeadline(time.Now())
	}
}
