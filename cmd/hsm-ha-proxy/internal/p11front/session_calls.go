package p11front

import (
	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

func (c *conn) cOpenSession(req *p11rpc.Request, w *p11rpc.Reply) error {
	slot, flags := req.Ulong(), req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	part, err := c.slot(slot)
	if err != nil {
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
	h := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	if err := c.sess.remove(h); err != nil {
		return err
	}
	c.s.m.sessions.Dec()
	return nil
}

func (c *conn) cCloseAllSessions(req *p11rpc.Request, _ *p11rpc.Reply) error {
	slot := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	if _, err := c.slot(slot); err != nil {
		return err
	}
	c.s.m.sessions.Sub(float64(c.sess.removeSlot(slot)))
	return nil
}

func (c *conn) cGetSessionInfo(req *p11rpc.Request, w *p11rpc.Reply) error {
	h := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.sess.get(h)
	if err != nil {
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
	h, userType := req.Ulong(), req.Ulong()
	clear(req.ByteArray())
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.grantedSession(h)
	if err != nil {
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
	h := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.sess.get(h)
	if err != nil {
		return err
	}
	return c.sess.logout(s.slot)
}
