package p11front

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
)

// conn is one client connection: one module instance of p11-kit-client.so in an application.
type conn struct {
	s       *Server
	nc      net.Conn
	cred    unixsock.Cred
	credErr error
	log     *slog.Logger
	version byte

	client      atomic.Pointer[string] // the client's name for metrics, refreshed by every grant lookup
	initialized atomic.Bool
	sess        *sessionTable

	wmu   sync.Mutex // one frame at a time on the socket
	calls sync.WaitGroup
	sem   chan struct{}
}

// newConn identifies the peer and registers the connection; nil when the server is shutting down.
func (s *Server) newConn(nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, sess: newSessionTable(), sem: make(chan struct{}, maxConcurrent)}
	if uc, ok := nc.(*net.UnixConn); ok {
		c.cred, c.credErr = unixsock.PeerCred(uc)
	} else {
		c.credErr = errors.New("not a unix connection")
	}
	c.log = s.log.With("conn", s.nextConn.Add(1), "uid", c.cred.UID, "pid", c.cred.PID)
	if !s.track(c) {
		nc.Close()
		return nil
	}
	name, _, ok := c.grants()
	switch {
	case c.credErr != nil:
		c.log.Warn("PKCS#11 connection: cannot read the peer credentials: it will see no slot", "err", c.credErr)
	case !ok:
		c.log.Warn("PKCS#11 connection from a uid that is not a configured client: it will see no slot", "gid", c.cred.GID)
	default:
		c.log.Debug("PKCS#11 connection", "client", name)
	}
	return c
}

// grants looks the peer up in the current client table: its name and granted partitions.
func (c *conn) grants() (name string, parts map[string]bool, ok bool) {
	if c.credErr == nil && c.s.auth != nil {
		name, parts, ok = c.s.auth.UnixClient(c.cred.UID, c.cred.GID)
	}
	if !ok {
		name = "unknown"
	}
	c.client.Store(&name)
	return name, parts, ok
}

// granted tells whether the peer may use partition now.
func (c *conn) granted(partition string) bool {
	_, parts, ok := c.grants()
	return ok && parts[partition]
}

func (c *conn) clientName() string {
	if p := c.client.Load(); p != nil {
		return *p
	}
	return "unknown"
}

// serve runs the connection: the version handshake, then frames until the peer goes away, the framing
// breaks, or the server shuts down. Calls are served concurrently; serve returns once they are done.
func (c *conn) serve() {
	defer c.s.untrack(c)
	defer c.nc.Close()
	br := bufio.NewReaderSize(c.nc, 64<<10)
	if err := c.handshake(br); err != nil {
		c.log.Debug("PKCS#11 connection closed before the handshake", "err", err)
		return
	}
	for {
		f, err := p11rpc.ReadFrame(br, c.s.opts.MaxFrame)
		if err != nil {
			c.readFailed(err)
			break
		}
		c.sem <- struct{}{}
		c.calls.Add(1)
		c.s.inFlight.Add(1)
		go c.handle(f)
	}
	c.calls.Wait()
	c.s.m.sessions.Sub(float64(c.sess.removeSlot(allSlots)))
}

// handshake answers the client's version byte with the version both speak.
func (c *conn) handshake(br *bufio.Reader) error {
	v, err := br.ReadByte()
	if err != nil {
		return err
	}
	c.version = p11rpc.Negotiate(v)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err = c.nc.Write([]byte{c.version})
	return err
}

// readFailed logs why the frame loop ended. A clean EOF is the application finalizing or exiting; anything
// else is a broken or hostile peer, and only its own connection pays.
func (c *conn) readFailed(err error) {
	var pe *p11rpc.ProtocolError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("PKCS#11 connection closed", "sessions", c.sess.total())
	case errors.As(err, &pe):
		c.s.m.protocolErrors.WithLabelValues("frame").Inc()
		c.log.Warn("PKCS#11 connection: malformed frame: closing this connection", "err", err)
	default:
		c.s.m.protocolErrors.WithLabelValues("truncated").Inc()
		c.log.Warn("PKCS#11 connection: reading a frame failed: closing this connection", "err", err)
	}
}

// handle serves one call and writes its reply under the same code.
func (c *conn) handle(f p11rpc.Frame) {
	defer func() {
		<-c.sem
		c.s.inFlight.Add(-1)
		c.calls.Done()
	}()
	start := time.Now()
	call, result, body := c.dispatch(f.Body)
	lat := time.Since(start)
	c.s.m.call(c.clientName(), call, result)
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("PKCS#11 call", "call", callName(call), "result", rvName(result), "latency_ms", float64(lat.Microseconds())/1000)
	}
	c.wmu.Lock()
	err := p11rpc.WriteFrame(c.nc, p11rpc.Frame{Code: f.Code, Body: body})
	c.wmu.Unlock()
	if err != nil {
		c.log.Debug("PKCS#11 connection: writing a reply failed", "call", callName(call), "err", err)
	}
}

// callCtx is the context of a cluster operation started by a call.
func (c *conn) callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.s.base, c.s.opts.RequestTimeout)
}
