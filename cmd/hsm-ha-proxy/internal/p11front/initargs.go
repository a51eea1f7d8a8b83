package p11front

import (
	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// initArgs are the arguments of the C_*Init calls that take a key ("uMu"): the session, the mechanism
// (nil: the application cancels the active operation, as PKCS#11 3.0 allows) and the key's object.
type initArgs struct {
	s    *session
	mech *p11rpc.Mechanism
	obj  *object
}

// readKeyInit reads "uMu". The key must be an object of the session's token whose class is class
// (CKO_PRIVATE_KEY to sign and decrypt, CKO_PUBLIC_KEY to verify and encrypt): CKR_KEY_HANDLE_INVALID (also
// for a certificate) or CKR_KEY_FUNCTION_NOT_PERMITTED otherwise.
func (c *conn) readKeyInit(req *p11rpc.Request, class uint64) (initArgs, error) {
	var a initArgs
	var err error
	if a.s, err = c.grantedSession(req); err != nil {
		return a, err
	}
	if a.mech, err = req.Mechanism(); err != nil {
		return a, err
	}
	o, err := c.objectArg(req, a.s, pkcs11.CKR_KEY_HANDLE_INVALID)
	if err != nil {
		return a, err
	}
	if err := req.Finish(); err != nil {
		return a, err
	}
	if o.class == pkcs11.CKO_CERTIFICATE {
		return a, rvErr(pkcs11.CKR_KEY_HANDLE_INVALID, "a certificate is not a key")
	}
	if a.mech != nil && o.class != class {
		return a, rvErr(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, "wrong key class for this operation")
	}
	a.obj = o
	return a, nil
}

// outputArgs are the arguments of the calls that produce output ("uayfy", "ufy"): the session, the
// input (nil for "ufy") and the caller's output buffer.
type outputArgs struct {
	s    *session
	data []byte
	n    uint64 // the caller's buffer size
	null bool   // a size query
}

// readOutput reads "uayfy" (withData) or "ufy".
func (c *conn) readOutput(req *p11rpc.Request, withData bool) (outputArgs, error) {
	var a outputArgs
	var err error
	if a.s, err = c.sessionArg(req); err != nil {
		return a, err
	}
	if withData {
		if a.data, err = req.ByteArray(); err != nil {
			return a, err
		}
	}
	if a.n, a.null, err = req.ByteBuffer(); err != nil {
		return a, err
	}
	return a, req.Finish()
}

// readUpdate reads "uay" (the Update calls without output, and C_VerifyFinal's signature).
func (c *conn) readUpdate(req *p11rpc.Request) (*session, []byte, error) {
	s, err := c.sessionArg(req)
	if err != nil {
		return nil, nil, err
	}
	data, err := req.ByteArray()
	if err != nil {
		return nil, nil, err
	}
	return s, data, req.Finish()
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
