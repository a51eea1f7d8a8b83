package p11front

import (
	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// sessionArg reads a session handle argument: the session, or CKR_SESSION_HANDLE_INVALID.
func (c *conn) sessionArg(req *p11rpc.Request) (*session, error) {
	h, err := req.Ulong()
	if err != nil {
		return nil, err
	}
	return c.sess.get(h)
}

// grantedSession is sessionArg for calls that use the token: the peer must still be granted the session's
// partition (a SIGHUP reload may have revoked it; the token is then gone for this peer).
func (c *conn) grantedSession(req *p11rpc.Request) (*session, error) {
	s, err := c.sessionArg(req)
	if err != nil {
		return nil, err
	}
	if !c.granted(s.partition) {
		return nil, rvErr(pkcs11.CKR_TOKEN_NOT_PRESENT, "partition no longer granted to this client")
	}
	return s, nil
}

func (c *conn) cOpenSession(req *p11rpc.Request, w *p11rpc.Reply) error {
	slot, part, err := c.slotArg(req)
	if err != nil {
		return err
	}
	flags, err := req.Ulong()
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	if flags&pkcs11.CKF_SERIAL_SESSION == 0 {
		return rvErr(pkcs11.CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKF_SERIAL_SESSION not set")
	}
	s, err := c.sess.add(slot, part, flags&pkcs11.CKF_RW_SESSION != 0)
	if err != nil {
		c.log.Warn("PKCS#11 C_OpenSession refused: too many sessions on this connection", "max", MaxSessions)
		return err
	}
	c.s.m.sessions.Inc()
	w.Ulong(s.handle)
	return nil
}

func (c *conn) cCloseSession(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, err := c.sessionArg(req)
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	if err := c.sess.remove(s.handle); err != nil {
		return err
	}
	c.s.m.sessions.Dec()
	return nil
}

func (c *conn) cCloseAllSessions(req *p11rpc.Request, _ *p11rpc.Reply) error {
	slot, _, err := c.slotArg(req)
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	c.s.m.sessions.Sub(float64(c.sess.removeSlot(slot)))
	return nil
}

func (c *conn) cGetSessionInfo(req *p11rpc.Request, w *p11rpc.Reply) error {
	s, err := c.sessionArg(req)
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	flags := uint64(pkcs11.CKF_SERIAL_SESSION)
	if s.rw {
		flags |= pkcs11.CKF_RW_SESSION
	}
	w.Ulong(s.slot)
	w.Ulong(c.sess.state(s))
	w.Ulong(flags)
	w.Ulong(0) // ulDeviceError: devices are the cluster's business
	return nil
}

// cLogin accepts any PIN from a granted client: the partition's PIN stays in the sidecar and access is
// decided by the peer's identity. The PIN is wiped from the request buffer and never looked at.
func (c *conn) cLogin(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, err := c.grantedSession(req)
	if err != nil {
		return err
	}
	userType, err := req.Ulong()
	if err != nil {
		return err
	}
	pin, err := req.ByteArray()
	clear(pin)
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	switch userType {
	case pkcs11.CKU_USER:
		return c.sess.login(s.slot)
	case pkcs11.CKU_CONTEXT_SPECIFIC:
		return nil // no key needs it (CKA_ALWAYS_AUTHENTICATE is false)
	}
	return rvErr(pkcs11.CKR_USER_TYPE_INVALID, "only the normal user logs in")
}

func (c *conn) cLogout(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, err := c.sessionArg(req)
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	return c.sess.logout(s.slot)
}
