package p11front

import (
	"crypto/rand"
	"hash"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// maxRandom bounds one C_GenerateRandom (its output travels in one message).
const maxRandom = 1 << 20

// digestOp is an active digest, done in software.
type digestOp struct {
	h     hash.Hash
	multi bool
}

func (c *conn) cDigestInit(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, err := c.grantedSession(req)
	if err != nil {
		return err
	}
	mp, err := req.Mechanism()
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if mp == nil {
		s.digest = nil
		return nil
	}
	if s.digest != nil {
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "a digest is active")
	}
	m, err := mechNamed(mp.Type, pkcs11.CKF_DIGEST)
	if err != nil {
		return err
	}
	s.digest = &digestOp{h: m.hash.New()}
	return nil
}

func (c *conn) cDigest(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, true)
	if err != nil {
		return err
	}
	return c.digestOut(a, w, false)
}

func (c *conn) cDigestUpdate(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, part, err := c.readUpdate(req)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.digest == nil {
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no digest")
	}
	s.digest.multi = true
	s.digest.h.Write(part)
	return nil
}

func (c *conn) cDigestFinal(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, false)
	if err != nil {
		return err
	}
	return c.digestOut(a, w, true)
}

// digestOut ends a digest (C_Digest, or C_DigestFinal when final), unless the caller only asked for the
// size or its buffer is too small.
func (c *conn) digestOut(a outputArgs, w *p11rpc.Reply, final bool) error {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	op := a.s.digest
	switch {
	case op == nil:
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no digest")
	case op.multi && !final:
		a.s.digest = nil
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "C_Digest after C_DigestUpdate")
	case a.sized(w, op.h.Size()):
		return nil
	}
	a.s.digest = nil
	op.h.Write(a.data)
	w.ByteArray(op.h.Sum(nil))
	return nil
}

func (c *conn) cSeedRandom(req *p11rpc.Request, _ *p11rpc.Reply) error {
	if _, err := c.sessionArg(req); err != nil {
		return err
	}
	if _, err := req.ByteArray(); err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	return rvErr(pkcs11.CKR_RANDOM_SEED_NOT_SUPPORTED, "the generator is the operating system's")
}

func (c *conn) cGenerateRandom(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, false)
	if err != nil {
		return err
	}
	if a.n > maxRandom {
		return rvErr(pkcs11.CKR_ARGUMENTS_BAD, "too many random bytes asked for at once")
	}
	out := make([]byte, a.n) // a NULL buffer (p11-kit 0.24 sends a zero length as NULL) gets nothing
	if a.null {
		out = out[:0]
	}
	_, _ = rand.Read(out) // never fails (crypto/rand)
	w.ByteArray(out)
	return nil
}
