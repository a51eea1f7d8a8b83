package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/handover"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
)

// Hot upgrade of the HTTP door (docs/ARCHITECTURE.md, "Hot upgrade"). net/http cannot give a connection
// away, so every unix connection is wrapped (hconn): once a handover is asked for, a connection that is
// idle between requests — no byte of a next request read since the last response was written — sees EOF
// from its Read, which net/http takes for
// the client closing it; its Close then passes the socket to the new process instead of closing it. A
// request in flight finishes here first. TLS connections carry state that cannot be passed: they finish
// their requests and are closed by the shutdown that follows.

// HandOver stops accepting (the socket file stays for the new process, which accepts on the same socket)
// and passes every unix connection to the new process as soon as it is idle, waiting at most
// server.shutdown_grace; it returns how many it passed. What is left (requests still running, TLS
// connections) is finished by Serve's shutdown when its context ends.
func (s *Server) HandOver(ctx context.Context, send handover.Sender) (int, error) {
	select {
	case <-s.started:
	default:
		return 0, errors.New("proxy: HandOver before Serve")
	}
	s.hmu.Lock()
	s.send = send
	s.hmu.Unlock()
	unixsock.KeepSocket(s.hl.Listener)
	s.hl.stopAccepting()
	conns := s.trackedConns()
	for _, c := range conns {
		c.requestHandoff()
	}
	deadline := time.NewTimer(s.grace)
	defer deadline.Stop()
	for _, c := range conns {
		select {
		case <-c.closed:
		case <-deadline.C:
			return int(s.passed.Load()), fmt.Errorf("proxy: %d connections still busy after %s", len(s.trackedConns()), s.grace)
		case <-ctx.Done():
			return int(s.passed.Load()), ctx.Err()
		}
	}
	return int(s.passed.Load()), nil
}

// Adopt serves a connection the old process of a hot upgrade passed (handover.KindHTTPConn): f is its
// socket (closed here). Serve must be running.
func (s *Server) Adopt(f *os.File) error {
	nc, err := unixsock.Adopt(f, s.started)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	select {
	case s.hl.adopted <- nc:
		return nil
	case <-s.hl.closed:
		nc.Close()
		return errors.New("proxy: shutting down; adopted connection closed")
	}
}

// handingOver tells whether HandOver has begun (connections going idle are passed).
func (s *Server) handingOver() bool {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	return s.send != nil
}

func (s *Server) trackedConns() []*hconn {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	out := make([]*hconn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// connState follows the unix connections: a connection going idle during a handover is passed.
func (s *Server) connState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*hconn)
	if !ok {
		return
	}
	switch st {
	case http.StateNew:
		s.hmu.Lock()
		s.conns[c] = struct{}{}
		s.hmu.Unlock()
	case http.StateActive:
		c.mu.Lock()
		c.active = true
		c.mu.Unlock()
	case http.StateIdle:
		c.mu.Lock()
		c.active = false
		c.mu.Unlock()
		if s.handingOver() {
			c.requestHandoff()
		}
	case http.StateClosed, http.StateHijacked:
		s.hmu.Lock()
		delete(s.conns, c)
		s.hmu.Unlock()
		c.closeOnce.Do(func() { close(c.closed) })
	}
}

// pass sends a connection's socket to the new process; false when it could not (it is then closed).
func (s *Server) pass(c *hconn) bool {
	s.hmu.Lock()
	send := s.send
	s.hmu.Unlock()
	if send == nil {
		return false
	}
	f, err := c.UnixConn.File()
	if err != nil {
		s.log.Error("upgrade: an HTTP connection could not be passed: closing it", "err", err)
		return false
	}
	defer f.Close()
	if err := send.Send(handover.KindHTTPConn, struct{}{}, f); err != nil {
		s.log.Error("upgrade: an HTTP connection could not be passed: closing it", "err", err)
		return false
	}
	s.passed.Add(1)
	return true
}

// hconn is a unix connection of the API that can be handed over between requests.
type hconn struct {
	*net.UnixConn
	s         *Server
	closed    chan struct{} // closed at StateClosed
	closeOnce sync.Once

	mu     sync.Mutex
	active bool // serving a request (ConnState)
	// gotBytes: a byte of a request not answered yet was read: since the last Write, or since the
	// connection opened. Not "since it went idle": net/http's background read may take the first byte of
	// the next request before the connection is idle. (HTTP/1.1 clients do not pipeline: the next request
	// comes after the whole response.)
	gotBytes  bool
	reading   bool      // a Read is waiting in the kernel
	handoff   bool      // pass the connection at its next idle moment
	handedOff bool      // Read answered EOF for the handoff: Close passes the socket
	deadline  time.Time // the read deadline net/http asked for
	passOnce  sync.Once
}

// requestHandoff makes the connection's next idle Read answer EOF; a Read waiting now is woken by an
// expired deadline (nothing is consumed).
func (c *hconn) requestHandoff() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active || c.gotBytes {
		return // a request is under way: connState asks again when it is idle
	}
	c.handoff = true
	if c.reading {
		_ = c.UnixConn.SetReadDeadline(time.Now())
	}
}

func (c *hconn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.handedOff || (c.handoff && !c.gotBytes) {
		c.handedOff = true
		c.mu.Unlock()
		return 0, io.EOF
	}
	c.reading = true
	c.mu.Unlock()
	n, err := c.UnixConn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = false
	if n > 0 {
		c.gotBytes = true
		if c.handoff { // a request began as the handoff was asked for: it is served here
			c.handoff = false
			_ = c.UnixConn.SetReadDeadline(c.deadline)
		}
		return n, err
	}
	var ne net.Error
	if c.handoff && errors.As(err, &ne) && ne.Timeout() {
		c.handedOff = true
		return 0, io.EOF
	}
	return n, err
}

func (c *hconn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.gotBytes = false
	c.mu.Unlock()
	return c.UnixConn.Write(p)
}

func (c *hconn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if c.handoff && c.reading {
		return nil // keep the expired deadline that wakes the reader
	}
	return c.UnixConn.SetReadDeadline(t)
}

func (c *hconn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.UnixConn.SetWriteDeadline(t)
}

// Close passes a handed-off connection to the new process, or closes it.
func (c *hconn) Close() error {
	c.mu.Lock()
	off := c.handedOff
	c.mu.Unlock()
	passed := false
	c.passOnce.Do(func() {
		if off {
			passed = c.s.pass(c)
		}
	})
	err := c.UnixConn.Close()
	if passed {
		return nil
	}
	return err
}

// handoffListener is the API's listener as net/http sees it: the real one (until a handover stops
// accepting) and the connections a hot upgrade's old process passed (Adopt).
type handoffListener struct {
	net.Listener
	s         *Server
	adopted   chan net.Conn
	accepted  chan acceptResult
	stopOnce  sync.Once
	closed    chan struct{}
	closeOnce sync.Once
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newHandoffListener(ln net.Listener, s *Server) *handoffListener {
	l := &handoffListener{Listener: ln, s: s, adopted: make(chan net.Conn), accepted: make(chan acceptResult),
		closed: make(chan struct{})}
	go l.run()
	return l
}

// run accepts on the real listener until it is closed.
func (l *handoffListener) run() {
	for {
		c, err := l.Listener.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.closed:
			if c != nil {
				c.Close()
			}
			return
		}
		var te interface{ Temporary() bool }
		if err != nil && !(errors.As(err, &te) && te.Temporary()) {
			return
		}
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.adopted:
		return l.wrap(c), nil
	case r := <-l.accepted:
		if r.err != nil {
			return nil, r.err
		}
		return l.wrap(r.c), nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) wrap(c net.Conn) net.Conn {
	if uc, ok := c.(*net.UnixConn); ok {
		return &hconn{UnixConn: uc, s: l.s, closed: make(chan struct{})}
	}
	return c
}

// stopAccepting closes the real listener; adopted connections still come through.
func (l *handoffListener) stopAccepting() {
	l.stopOnce.Do(func() { l.Listener.Close() })
}

func (l *handoffListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	var err error
	l.stopOnce.Do(func() { err = l.Listener.Close() })
	return err
}
