package p11front

import (
	"crypto/ecdsa"
	"crypto/rsa"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// verifyOp is an active verification, done in software with the public key (no device is involved).
type verifyOp struct{ *sigPlan }

func (c *conn) cVerifyInit(req *p11rpc.Request, _ *p11rpc.Reply) error {
	a, err := c.readKeyInit(req, pkcs11.CKO_PUBLIC_KEY)
	if err != nil {
		return err
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.mech == nil {
		a.s.verify = nil
		return nil
	}
	if a.s.verify != nil {
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "a verification is active")
	}
	m, err := mechNamed(a.mech.Type, pkcs11.CKF_VERIFY)
	if err != nil {
		return err
	}
	plan, err := c.planSig("C_VerifyInit", m, a.mech, a.obj)
	if err != nil {
		return err
	}
	a.s.verify = &verifyOp{plan}
	return nil
}

func (c *conn) cVerify(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, err := c.sessionArg(req)
	if err != nil {
		return err
	}
	data, err := req.ByteArray()
	if err != nil {
		return err
	}
	sig, err := req.ByteArray()
	if err != nil {
		return err
	}
	if err := req.Finish(); err != nil {
		return err
	}
	return c.verifyEnd(s, data, sig, false)
}

func (c *conn) cVerifyUpdate(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, part, err := c.readUpdate(req)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.verify == nil {
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no verification")
	}
	if err := s.verify.update(part); err != nil {
		s.verify = nil
		return err
	}
	return nil
}

func (c *conn) cVerifyFinal(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, sig, err := c.readUpdate(req)
	if err != nil {
		return err
	}
	return c.verifyEnd(s, nil, sig, true)
}

// verifyEnd ends a verification (C_Verify, or C_VerifyFinal when final) whatever its result.
func (c *conn) verifyEnd(s *session, data, sig []byte, final bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.verify
	s.verify = nil
	switch {
	case op == nil:
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no verification")
	case op.multi && !final:
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "C_Verify after C_VerifyUpdate")
	}
	return op.check(op.digest(data), sig)
}

// check verifies sig over digest: CKR_SIGNATURE_LEN_RANGE for a signature of the wrong size,
// CKR_SIGNATURE_INVALID for a wrong one.
func (p *sigPlan) check(digest, sig []byte) error {
	if len(sig) != p.sigLen {
		return rvErr(pkcs11.CKR_SIGNATURE_LEN_RANGE, "signature length")
	}
	ok := false
	switch pk := p.obj.pub.(type) {
	case *rsa.PublicKey:
		if p.pss != nil {
			if len(digest) != p.hash.Size() {
				return rvErr(pkcs11.CKR_DATA_LEN_RANGE, "RSA-PSS input must be a digest")
			}
			ok = rsa.VerifyPSS(pk, p.hash, digest, sig, p.pss) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(pk, p.hash, digest, sig) == nil
		}
	case *ecdsa.PublicKey:
		ok = verifyECDSA(pk, digest, sig)
	}
	if !ok {
		return rvErr(pkcs11.CKR_SIGNATURE_INVALID, "signature invalid")
	}
	return nil
}
