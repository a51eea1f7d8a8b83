package devicebackend

import (
	"context"

	"github.com/miekg/pkcs11"
)

// sessionPool is a bounded pool of read-only sessions on one token of one module instance. The slots
// channel counts open sessions, so the pool never exceeds its size; a borrower waits at most until its
// context ends.
type sessionPool struct {
	in    *Instance
	slot  uint
	Idle  chan pkcs11.SessionHandle
	Slots chan struct{}
}

func newSessionPool(in *Instance, slot uint, size int) *sessionPool {
	return &sessionPool{in: in, slot: slot, Idle: make(chan pkcs11.SessionHandle, size), Slots: make(chan struct{}, size)}
}

// warm opens one session ahead of need, so that the first call after a failover (DR's first call when the
// local region is lost) does not pay a C_OpenSession round trip on top of its own. A failure is not a
// verdict on the device: the session is then opened on demand, where errors are classified.
func (p *sessionPool) warm() {
	select {
	case p.Slots <- struct{}{}:
	default:
		return
	}
	s, err := p.in.ctx.OpenSession(p.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		<-p.Slots
		return
	}
	p.Idle <- s
}

// get borrows an idle session or opens a new one while under the size.
func (p *sessionPool) get(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case s := <-p.Idle:
		return s, nil
	default:
	}
	select {
	case s := <-p.Idle:
		return s, nil
	case p.Slots <- struct{}{}:
		s, err := p.in.ctx.OpenSession(p.slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			<-p.Slots
			return 0, err
		}
		return s, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// put returns a healthy session.
func (p *sessionPool) put(s pkcs11.SessionHandle) {
	select {
	case p.Idle <- s:
	default: // cannot happen: idle has room for every slot
		p.discard(s)
	}
}

// discard closes a session that saw a broken-session or device error, or whose call was abandoned. On a
// broken instance the close is skipped: the handle dies with the instance.
func (p *sessionPool) discard(s pkcs11.SessionHandle) {
	if !p.in.Broken.Load() && !p.in.retired.Load() {
		_ = p.in.ctx.CloseSession(s)
	}
	<-p.Slots
}
