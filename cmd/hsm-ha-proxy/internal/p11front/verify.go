package p11front

import (
	"crypto/ecdsa"
	"crypto/rsa"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// Verification is done in software with the public key (no device is involved). Its calls end with a
// result rather than an output: C_Verify ("uayay": session, data, signature) and C_VerifyFinal ("uay").

func (c *conn) cVerify(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h, data, sig := req.Ulong(), req.ByteArray(), req.ByteArray()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.sess.get(h)
	if err != nil {
		return err
	}
	return c.verifyEnd(s, data, sig, false)
}

func (c *conn) cVerifyFinal(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h, sig := req.Ulong(), req.ByteArray()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.sess.get(h)
	if err != nil {
		return err
	}
	return c.verifyEnd(s, nil, sig, true)
}

// verifyEnd ends a verification (C_Verify, or C_VerifyFinal when final) whatever its result.
func (c *conn) verifyEnd(s *session, data, sig []byte, final bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	op, p, err := c.active(s, opVerify, !final)
	s.ops.Active[opVerify] = nil
	if err != nil {
		return err
	}
	src, err := op.source(p, data, final, families[opVerify].tooLong)
	if err != nil {
		return err
	}
	digest, err := p.message(src, final)
	if err != nil {
		return err
	}
	if p.secret != nil {
		return c.verifyMAC(s, p, digest, sig)
	}
	return p.check(digest, sig)
}

// check verifies sig over digest: CKR_SIGNATURE_LEN_RANGE for a signature of the wrong size,
// CKR_SIGNATURE_INVALID for a wrong one.
func (p *opPlan) check(digest, sig []byte) error {
	if len(sig) != p.outLen {
		return rvErr(pkcs11.CKR_SIGNATURE_LEN_RANGE, "signature length")
	}
	ok := false
	switch pk := p.obj.pub.(type) {
	case *rsa.PublicKey:
		if p.pss != nil {
			if len(digest) != p.sigHash.Size() {
				return rvErr(pkcs11.CKR_DATA_LEN_RANGE, "RSA-PSS input must be a digest")
			}
			ok = rsa.VerifyPSS(pk, p.sigHash, digest, sig, p.pss) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(pk, p.sigHash, digest, sig) == nil
		}
	case *ecdsa.PublicKey:
		ok = verifyECDSA(pk, digest, sig)
	}
	if !ok {
		return rvErr(pkcs11.CKR_SIGNATURE_INVALID, "signature invalid")
	}
	return nil
}
