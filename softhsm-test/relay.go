package softhsmtest

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

type relayMode int

const (
	modePass relayMode = iota // forward bytes (after the configured delay)
	modeHang                  // keep connections, forward nothing; bytes are held until the mode changes
	modeDown                  // close existing connections and every new one at once
)

func (m relayMode) String() string {
	switch m {
	case modePass:
		return "pass"
	case modeHang:
		return "hang"
	case modeDown:
		return "down"
	}
	return "unknown"
}

// relay accepts connections on a listener, dials the target for each and copies bytes both ways
// through the fault logic. Mode and delays are read by every copy loop at every chunk, so changes
// affect existing and new connections. The listener can be closed and opened again (unlisten, listen)
// while the target is dead, so that clients are refused as by the dead target itself.
type relay struct {
	network, address  string
	dialNet, dialAddr string
	ctx               context.Context // cancelled by close: aborts dials
	cancel            context.CancelFunc
	wg                sync.WaitGroup
	mu                sync.Mutex
	ln                net.Listener // nil while not listening
	mode              relayMode
	delay             [2]time.Duration
	changed           chan struct{} // closed and replaced at every change of mode or delay
	pairs             map[*pair]struct{}
	closed            bool
	corrupt           atomic.Bool // flip a bit in every C_Sign reply's signature (rpcframe.go)
	signs             signCounts  // C_Sign replies carried (rpcframe.go)
}

// newRelay listens on (network, addr) and relays to (dialNet, dialAddr).
func newRelay(network, addr, dialNet, dialAddr string, delay time.Duration) (*relay, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &relay{
		network: network, address: addr, dialNet: dialNet, dialAddr: dialAddr, ctx: ctx, cancel: cancel,
		delay: [2]time.Duration{delay, delay}, changed: make(chan struct{}), pairs: make(map[*pair]struct{}),
	}
	if err := r.listen(); err != nil {
		cancel()
		return nil, err
	}
	return r, nil
}

// listen starts listening (again) on the relay's address; a stale unix socket file is removed first.
// A no-op while listening.
func (r *relay) listen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errClosed
	}
	if r.ln != nil {
		return nil
	}
	if r.network == "unix" {
		if fi, err := os.Lstat(r.address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(r.address)
		}
	}
	ln, err := net.Listen(r.network, r.address)
	if err != nil {
		return err
	}
	r.address = ln.Addr().String() // a TCP port 0 becomes the port chosen, kept for the next listen
	r.ln = ln
	r.wg.Add(1)
	go r.acceptLoop(ln)
	return nil
}

// unlisten stops listening (a unix socket file is removed): new connections are refused. Existing
// connections are kept.
func (r *relay) unlisten() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		_ = r.ln.Close()
		r.ln = nil
	}
}

func (r *relay) addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.address
}

// notifyLocked wakes every copy loop waiting on a mode or delay change. r.mu must be held.
func (r *relay) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *relay) setMode(m relayMode) {
	r.mu.Lock()
	r.mode = m
	for p := range r.pairs {
		p.held.Store(false) // any change of mode ends holdCurrent
	}
	r.notifyLocked()
	var victims []*pair
	if m == modeDown {
		victims = r.pairsLocked()
	}
	r.mu.Unlock()
	for _, p := range victims {
		p.close()
	}
}

func (r *relay) setDelay(toSrv, toCli time.Duration) {
	r.mu.Lock()
	r.delay = [2]time.Duration{max(toSrv, 0), max(toCli, 0)}
	r.notifyLocked()
	r.mu.Unlock()
}

func (r *relay) state(dir int) (relayMode, time.Duration, chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mode, r.delay[dir], r.changed
}

// holdCurrent holds the bytes of every current connection, as a hang does, while new connections pass;
// the next setMode releases them.
func (r *relay) holdCurrent() {
	r.mu.Lock()
	for p := range r.pairs {
		p.held.Store(true)
	}
	r.notifyLocked()
	r.mu.Unlock()
}

// reset closes every current connection once.
func (r *relay) reset() {
	r.mu.Lock()
	victims := r.pairsLocked()
	r.mu.Unlock()
	for _, p := range victims {
		p.close()
	}
}

func (r *relay) pairsLocked() []*pair {
	out := make([]*pair, 0, len(r.pairs))
	for p := range r.pairs {
		out = append(out, p)
	}
	return out
}

func (r *relay) connections() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pairs)
}

// close stops listening (removing the unix socket file), closes every connection and waits for every
// goroutine of the relay. Idempotent.
func (r *relay) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.wg.Wait()
		return
	}
	r.closed = true
	victims := r.pairsLocked()
	r.notifyLocked()
	if r.ln != nil {
		_ = r.ln.Close()
		r.ln = nil
	}
	r.mu.Unlock()
	r.cancel()
	for _, p := range victims {
		p.close()
	}
	r.wg.Wait()
}

func (r *relay) acceptLoop(ln net.Listener) {
	defer r.wg.Done()
	for wait := time.Millisecond; ; {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// e.g. EMFILE: back off and retry, unless closed meanwhile
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, 100*time.Millisecond)
			continue
		}
		wait = time.Millisecond
		tuneConn(c)
		r.mu.Lock()
		if r.closed || r.mode == modeDown {
			r.mu.Unlock()
			abortConn(c)
			continue
		}
		r.wg.Add(1)
		r.mu.Unlock()
		go r.serve(c)
	}
}

// serve dials the target for an accepted client connection and relays until either side is closed.
func (r *relay) serve(client net.Conn) {
	defer r.wg.Done()
	var d net.Dialer
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	server, err := d.DialContext(ctx, r.dialNet, r.dialAddr)
	cancel()
	if err != nil {
		// Target down (killed device): the client sees its connection closed at once.
		abortConn(client)
		return
	}
	tuneConn(server)
	p := &pair{client: client, server: server, done: make(chan struct{})}
	r.mu.Lock()
	if r.closed || r.mode == modeDown {
		r.mu.Unlock()
		p.close()
		return
	}
	r.pairs[p] = struct{}{}
	r.mu.Unlock()

	var wg sync.WaitGroup
	for dir, ends := range [2][2]net.Conn{{client, server}, {server, client}} {
		pp := &pipe{r: r, p: p, dir: dir, src: ends[0], dst: ends[1], notify: make(chan struct{}, 1)}
		if dir == 1 {
			pp.scan = &replyScanner{counts: &r.signs}
		}
		wg.Add(2)
		go func() { defer wg.Done(); pp.readLoop() }()
		go func() { defer wg.Done(); pp.writeLoop() }()
	}
	wg.Wait()
	p.close()
	r.mu.Lock()
	delete(r.pairs, p)
	r.mu.Unlock()
}

// pair is one relayed connection: the accepted client side and the dialled server side.
type pair struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{}
	held           atomic.Bool // holdCurrent: behave as in modeHang until the next mode change
}

func (p *pair) close() {
	p.once.Do(func() {
		close(p.done)
		abortConn(p.client)
		abortConn(p.server)
	})
}

// pipe carries one direction of a pair: readLoop queues each chunk with its arrival time, writeLoop
// delivers the chunks in order, each at arrival + the direction's current delay, and not while the relay
// hangs. The end of the stream is queued like a chunk: a peer's close is delayed and held the same way.
type pipe struct {
	r        *relay
	p        *pair
	dir      int // 0: client to server, 1: server to client (index of relay.delay)
	src, dst net.Conn
	mu       sync.Mutex
	queue    []chunk
	notify   chan struct{} // capacity 1: "queue changed"
	scan     *replyScanner // server to client: follows the RPC frames, for CorruptSignatures
}

type chunk struct {
	data []byte
	at   time.Time
	eof  bool // the source is closed (or failed): close the pair once delivered
}

func (pp *pipe) readLoop() {
	buf := make([]byte, 64<<10)
	for {
		n, err := pp.src.Read(buf)
		if n > 0 {
			pp.push(chunk{data: append([]byte(nil), buf[:n]...), at: time.Now()})
		}
		if err != nil {
			pp.push(chunk{at: time.Now(), eof: true})
			return
		}
	}
}

func (pp *pipe) push(c chunk) {
	pp.mu.Lock()
	pp.queue = append(pp.queue, c)
	pp.mu.Unlock()
	select {
	case pp.notify <- struct{}{}:
	default:
	}
}

// next returns the next chunk, or false once the pair is closed.
func (pp *pipe) next() (chunk, bool) {
	for {
		pp.mu.Lock()
		if len(pp.queue) > 0 {
			c := pp.queue[0]
			pp.queue[0] = chunk{}
			pp.queue = pp.queue[1:]
			pp.mu.Unlock()
			return c, true
		}
		pp.mu.Unlock()
		select {
		case <-pp.notify:
		case <-pp.p.done:
			return chunk{}, false
		}
	}
}

func (pp *pipe) writeLoop() {
	defer pp.p.close()
	for {
		c, ok := pp.next()
		if !ok || !pp.waitDeliver(c.at) || c.eof {
			return
		}
		if pp.scan != nil {
			pp.scan.feed(c.data, pp.r.corrupt.Load())
		}
		if _, err := pp.dst.Write(c.data); err != nil {
			return
		}
	}
}

// waitDeliver waits until the chunk that arrived at may be delivered; false if the pair is closed or
// the relay is down.
func (pp *pipe) waitDeliver(at time.Time) bool {
	for {
		mode, delay, changed := pp.r.state(pp.dir)
		if mode == modePass && pp.p.held.Load() {
			mode = modeHang
		}
		switch mode {
		case modeDown:
			return false
		case modeHang:
			select {
			case <-changed:
				continue
			case <-pp.p.done:
				return false
			}
		}
		wait := time.Until(at.Add(delay))
		if wait <= 0 {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			return true
		case <-changed:
			t.Stop()
		case <-pp.p.done:
			t.Stop()
			return false
		}
	}
}

// tuneConn sets TCP_NODELAY on TCP legs (without it p11-kit's small RPC messages crawl); unix legs need
// nothing.
func tuneConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}

// abortConn closes c, with a RST on TCP (linger 0); unix sockets have no RST, a close is all there is.
func abortConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
