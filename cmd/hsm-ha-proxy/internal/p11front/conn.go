package p11front

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
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

	wmu sync.Mutex // one frame at a time on the socket

	// Calls that may wait for the cluster run on workers, long-lived goroutines of the connection (their
	// stacks stay grown; a goroutine per call paid for growing one every time). sem holds a slot per such
	// call in flight; work hands a frame to an idle worker. Only the reader goroutine touches nworkers.
	sem      chan struct{}
	work     chan p11rpc.Frame
	nworkers int
	workers  sync.WaitGroup

	// A hot upgrade stops the reader at a frame boundary (handover.go). shook says the version handshake
	// is done; pending is input an earlier process read but did not serve (an adopted connection's).
	shook   bool
	pending *bytes.Reader
	hmu     sync.Mutex // guards handover and idle
	// handover: stop before the next frame; idle: the reader is waiting for a frame's first byte.
	handover, idle bool
	exported       *connState    // set when serve returned to hand the connection over
	done           chan struct{} // closed when serve returns
}

// newConn identifies the peer and registers the connection; nil when the server is shutting down.
func (s *Server) newConn(nc net.Conn) *conn {
	c := s.makeConn(nc)
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

// makeConn builds a connection's state and reads its peer's credentials.
func (s *Server) makeConn(nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, sess: newSessionTable(), sem: make(chan struct{}, maxConcurrent), work: make(chan p11rpc.Frame),
		done: make(chan struct{})}
	if uc, ok := nc.(*net.UnixConn); ok {
		c.cred, c.credErr = unixsock.PeerCred(uc)
	} else {
		c.credErr = errors.New("not a unix connection")
	}
	c.log = s.log.With("conn", s.nextConn.Add(1), "uid", c.cred.UID, "pid", c.cred.PID)
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
// breaks, or the server shuts down. Calls that may wait for the cluster are served concurrently by
// workers, the others at once by this goroutine (see inline); serve returns once they are all done.
func (c *conn) serve() {
	defer close(c.done)
	defer c.s.untrack(c)
	var in io.Reader = c.nc
	if c.pending != nil {
		in = io.MultiReader(c.pending, c.nc)
	}
	br := bufio.NewReaderSize(in, 64<<10)
	if !c.shook {
		if c.waitFrame(br) {
			c.export(br)
			return
		}
		if err := c.handshake(br); err != nil {
			c.nc.Close()
			c.log.Debug("PKCS#11 connection closed before the handshake", "err", err)
			return
		}
	}
	handover := false
	for {
		if handover = c.waitFrame(br); handover {
			break
		}
		f, err := p11rpc.ReadFrame(br, c.s.opts.MaxFrame)
		var tooLarge *p11rpc.FrameTooLargeError
		if errors.As(err, &tooLarge) {
			err = c.oversize(br, tooLarge)
			if err == nil {
				continue
			}
		}
		if err != nil {
			c.readFailed(err)
			break
		}
		c.s.inFlight.Add(1)
		if inline(f) {
			c.handle(f)
			continue
		}
		c.sem <- struct{}{}
		c.toWorker(f)
	}
	close(c.work)
	c.workers.Wait() // the calls in flight are answered
	if handover {
		c.export(br)
		return
	}
	c.nc.Close()
	c.s.m.sessions.Sub(float64(c.sess.removeSlot(allSlots)))
}

// inline tells whether a call is served by the reader goroutine itself, before the next frame is read:
// every call that cannot wait for the cluster (nor for a long time on anything else). Going through a
// worker costs two goroutine hand-offs; a signature is three calls (C_SignInit, the C_Sign size query,
// C_Sign), of which only the last needs a device. Waiting is left to workers: C_Sign, C_SignFinal,
// C_Decrypt, C_DecryptFinal, C_Encrypt and C_EncryptFinal with an output buffer (their size queries, a NULL
// buffer — the last element "fy" reads 0 —, are answered from the plan; an AES-GCM encryption runs on a
// device), C_Verify and C_VerifyFinal (an HMAC is verified on a device), the key-management calls
// (admin.go: every device of a partition), and any large message (a big C_Digest input is
// hashed on a worker, so that other threads' calls on this connection do not queue behind it). A call
// that a misbehaving application makes on a session busy with a signature waits for that signature's
// session lock (at most the request timeout), delaying this connection's later calls only.
func inline(f p11rpc.Frame) bool {
	if len(f.Body) > inlineMaxBody {
		return false
	}
	switch callIDOf(f.Body) {
	case p11rpc.CallSign, p11rpc.CallSignFinal, p11rpc.CallDecrypt, p11rpc.CallDecryptFinal,
		p11rpc.CallEncrypt, p11rpc.CallEncryptFinal:
		b := f.Body
		return len(b) >= 4 && binary.BigEndian.Uint32(b[len(b)-4:]) == 0
	case p11rpc.CallVerify, p11rpc.CallVerifyFinal, p11rpc.CallGenerateKeyPair, p11rpc.CallCreateObject,
		p11rpc.CallDestroyObject, p11rpc.CallSetAttributeValue:
		return false
	}
	return true
}

// inlineMaxBody is the largest message served inline.
const inlineMaxBody = 16 << 10

// toWorker hands a call to an idle worker, or to a new one while there are fewer than maxConcurrent
// (the caller holds a slot of sem, so with maxConcurrent workers one of them is about to be idle).
func (c *conn) toWorker(f p11rpc.Frame) {
	select {
	case c.work <- f:
		return
	default:
	}
	if c.nworkers < maxConcurrent {
		c.nworkers++
		c.workers.Add(1)
		go c.worker(f)
		return
	}
	c.work <- f
}

// worker serves f, then every frame it is handed, until the connection ends.
func (c *conn) worker(f p11rpc.Frame) {
	defer c.workers.Done()
	for ok := true; ok; f, ok = <-c.work {
		c.handle(f)
		<-c.sem
	}
}

// handshake answers the client's version byte with the version both speak.
func (c *conn) handshake(br *bufio.Reader) error {
	v, err := br.ReadByte()
	if err != nil {
		return err
	}
	c.version = p11rpc.Negotiate(v)
	c.shook = true
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

// handle serves one call and writes its reply under the same code (one write: header and body).
func (c *conn) handle(f p11rpc.Frame) {
	defer c.s.inFlight.Add(-1)
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
