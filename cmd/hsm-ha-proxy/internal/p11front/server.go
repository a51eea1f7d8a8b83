package p11front

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// DefaultMaxFrame caps one message (options + body). p11-kit-client sends a single-part input in one
	// message, so this is also the largest single-part C_Sign/C_Digest input; multi-part input is unbounded
	// for hash-and-sign and digest mechanisms (it is hashed as it comes).
	DefaultMaxFrame = 16 << 20
	// maxConcurrent bounds the calls of one connection served at the same time (p11-kit-client pipelines
	// the calls of an application's threads on one socket). Further frames wait in the socket.
	maxConcurrent = 32
	// defaultTimeout is the deadline of a cluster operation when Options.RequestTimeout is zero.
	defaultTimeout = 5 * time.Second
	// defaultGrace is how long calls in flight may run after Serve's context ends when
	// Options.ShutdownGrace is zero.
	defaultGrace = 10 * time.Second
	// forcedDrain bounds the wait for calls still running after the grace period cancelled them.
	forcedDrain = 5 * time.Second
)

// Options configure a Server. Partitions is required; everything else has a default.
type Options struct {
	// Partitions are the configured partitions in config order: slot id = position + 1, stable across
	// restarts and SIGHUP reloads of the clients: section.
	Partitions []string
	// RequestTimeout is the deadline of each sign/decrypt through the cluster (policy.request_timeout).
	RequestTimeout time.Duration
	// ShutdownGrace is how long calls in flight may run after Serve's context ends (server.shutdown_grace).
	ShutdownGrace time.Duration
	// MaxFrame caps one message; 0 means DefaultMaxFrame.
	MaxFrame uint32
	// Logger gets the access log (Info) and problems; nil discards.
	Logger *slog.Logger
	// Registerer gets the front end's metrics (the sidecar's registry); nil registers nowhere.
	Registerer prometheus.Registerer
}

// Server is the PKCS#11 front end. Create it with New, run it with Serve.
type Server struct {
	be    Backend
	auth  Authorizer
	opts  Options
	log   *slog.Logger
	m     *metrics
	objs  *registry
	slots map[string]uint64 // partition -> slot id

	serving  atomic.Bool
	draining atomic.Bool
	base     context.Context // parent of every call's context; cancelled when the grace period runs out
	// cancelBase cancels base; ln is the listener; both set by Serve before started is closed.
	cancelBase  context.CancelFunc
	ln          net.Listener
	started     chan struct{}
	acceptDone  chan struct{} // closed when the accept loop has returned
	handingOver atomic.Bool   // HandOver closed the listener: Serve waits for its context
	inFlight    atomic.Int64  // calls being served
	connWG      sync.WaitGroup
	nextConn    atomic.Uint64

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// New returns a front end for the cluster be, deciding who sees which partition with auth.
func New(be Backend, auth Authorizer, opts Options) *Server {
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = defaultTimeout
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = defaultGrace
	}
	if opts.MaxFrame == 0 {
		opts.MaxFrame = DefaultMaxFrame
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{be: be, auth: auth, opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer),
		objs: newRegistry(), slots: map[string]uint64{}, conns: map[*conn]struct{}{}, base: context.Background(),
		started: make(chan struct{}), acceptDone: make(chan struct{})}
	for i, p := range opts.Partitions {
		s.slots[p] = uint64(i) + 1
	}
	return s
}

// partitionOf returns the partition of a slot id.
func (s *Server) partitionOf(slot uint64) (string, bool) {
	if slot == 0 || slot > uint64(len(s.opts.Partitions)) {
		return "", false
	}
	return s.opts.Partitions[slot-1], true
}

// Serve accepts connections on ln until ctx ends, then shuts down: it closes ln (which removes the
// socket), lets the calls in flight finish within the grace period (new calls are refused meanwhile),
// cancels those still running after it, closes every connection and returns nil. It returns an error
// when ln fails. Connections are never closed by the server before that.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("p11front: Serve called twice")
	}
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	s.base, s.cancelBase, s.ln = base, cancelBase, ln
	close(s.started)
	errc := make(chan error, 1)
	go func() {
		defer close(s.acceptDone)
		errc <- s.accept(ln)
	}()
	s.log.Info("PKCS#11 front end serving", "addr", ln.Addr().String(), "partitions", len(s.opts.Partitions))

	var serveErr error
	select {
	case serveErr = <-errc:
		if s.handingOver.Load() {
			<-ctx.Done() // the connections are being handed over; the caller says when we are done
		}
	case <-ctx.Done():
		s.draining.Store(true)
		ln.Close()
		<-errc
	}
	s.draining.Store(true)
	s.drain(cancelBase)
	s.closeConns()
	s.connWG.Wait()
	s.log.Info("PKCS#11 front end stopped")
	if serveErr != nil {
		return fmt.Errorf("p11front: accept: %w", serveErr)
	}
	return nil
}

// accept runs the accept loop until ln is closed (nil) or fails for good.
func (s *Server) accept(ln net.Listener) error {
	delay := 5 * time.Millisecond
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if isTemporary(err) {
				s.log.Warn("PKCS#11 front end: accept failed; retrying", "err", err, "delay", delay.String())
				time.Sleep(delay)
				delay = min(2*delay, time.Second)
				continue
			}
			return err
		}
		delay = 5 * time.Millisecond
		c := s.newConn(nc)
		if c == nil {
			continue
		}
		s.connWG.Add(1)
		go func() {
			defer s.connWG.Done()
			c.serve()
		}()
	}
}

// isTemporary treats running out of file descriptors as temporary (as net/http does): the accept loop
// must survive a burst of connections.
func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// drain waits for the calls in flight, at most the grace period; then it cancels them and waits a little
// more. (A counter polled, not a WaitGroup: connections still start calls while it waits.)
func (s *Server) drain(cancel context.CancelFunc) {
	if n := s.inFlight.Load(); n > 0 {
		s.log.Info("PKCS#11 front end: draining calls in flight", "in_flight", n, "grace", s.opts.ShutdownGrace.String())
	}
	if s.waitIdle(s.opts.ShutdownGrace) {
		return
	}
	s.log.Warn("PKCS#11 front end: grace period over: cancelling the calls still in flight", "in_flight", s.inFlight.Load())
	cancel()
	if !s.waitIdle(forcedDrain) {
		s.log.Error("PKCS#11 front end: calls still running after cancellation; closing anyway", "in_flight", s.inFlight.Load())
	}
}

// waitIdle waits up to d for no call to be in flight.
func (s *Server) waitIdle(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for s.inFlight.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// closeConns closes every connection (at shutdown only).
func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.nc.Close()
	}
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.m.connections.Inc()
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.m.connections.Dec()
	}
}
