package p11front

import (
	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// The arguments handlers resolve once read: session, slot and object handles, and output buffers.

// grantedSession is the session with handle h (c.sess.get) for calls that use the token: the peer must still be granted the session's
// partition (a SIGHUP reload may have revoked it; the token is then gone for this peer).
func (c *conn) grantedSession(h uint64) (*session, error) {
	s, err := c.sess.get(h)
	if err != nil {
		return nil, err
	}
	if !c.granted(s.partition) {
		return nil, rvErr(pkcs11.CKR_TOKEN_NOT_PRESENT, "partition no longer granted to this client")
	}
	return s, nil
}

// slot is the partition of slot id, which the peer must be allowed to see: CKR_SLOT_ID_INVALID otherwise
// (a slot of a partition the peer is not granted does not exist for it).
func (c *conn) slot(id uint64) (string, error) {
	part, ok := c.s.partitionOf(id)
	if !ok || !c.granted(part) {
		return "", rvErr(pkcs11.CKR_SLOT_ID_INVALID, "no such slot for this client")
	}
	return part, nil
}

// object is the object with handle h, which must belong to the session's partition: invalid otherwise (a
// handle of another partition does not exist for this session).
func (c *conn) object(s *session, h uint64, invalid rv) (*object, error) {
	o := c.s.objs.get(h)
	if o == nil || o.partition != s.partition {
		return nil, rvErr(invalid, "no such object in this session's token")
	}
	return o, nil
}

// keyObject is the key of a C_*Init call. It must be an object of the session's token whose class is
// class (CKO_PRIVATE_KEY to sign and decrypt, CKO_PUBLIC_KEY to verify and encrypt) or a secret key (whose
// mechanism the family's plan checks):
// CKR_KEY_HANDLE_INVALID (also for a certificate) or, unless the call cancels (no mechanism),
// CKR_KEY_FUNCTION_NOT_PERMITTED otherwise.
func (c *conn) keyObject(s *session, h, class uint64, hasMech bool) (*object, error) {
	o, err := c.object(s, h, pkcs11.CKR_KEY_HANDLE_INVALID)
	switch {
	case err != nil:
		return nil, err
	case o.class == pkcs11.CKO_CERTIFICATE:
		return nil, rvErr(pkcs11.CKR_KEY_HANDLE_INVALID, "a certificate is not a key")
	case hasMech && o.class != class && o.class != pkcs11.CKO_SECRET_KEY:
		return nil, rvErr(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, "wrong key class for this operation")
	}
	return o, nil
}

// outputArgs are the input and output buffer of a call that produces output ("uayfy", "ufy").
type outputArgs struct {
	data []byte // nil for "ufy"
	n    uint64 // the caller's buffer size
	null bool   // a size query
}

// sized answers an output of length n when the caller only asked for the size or its buffer is too small:
// the length alone (the client reports CKR_BUFFER_TOO_SMALL for a real buffer). It returns false when the
// output fits and must be produced; the operation stays active when it returns true.
func (a outputArgs) sized(w *p11rpc.Reply, n int) bool {
	if n > 0 && (a.null || a.n < uint64(n)) {
		w.ByteArrayLen(uint64(n))
		return true
	}
	return false
}
