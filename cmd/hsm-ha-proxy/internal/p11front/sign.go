package p11front

import (
	"crypto/ecdsa"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// signOp is an active signature: the plan and the cluster's key.
type signOp struct {
	*sigPlan
	key KeyHandle
}

func (c *conn) cSignInit(req *p11rpc.Request, _ *p11rpc.Reply) error {
	a, err := c.readKeyInit(req, pkcs11.CKO_PRIVATE_KEY)
	if err != nil {
		return err
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.mech == nil {
		a.s.sign = nil
		return nil
	}
	if a.s.sign != nil {
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "a signature is active")
	}
	m, err := mechNamed(a.mech.Type, pkcs11.CKF_SIGN)
	if err != nil {
		return err
	}
	plan, err := newSigPlan(m, a.mech, a.obj)
	if err != nil {
		return err
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.s.be.Key(ctx, a.obj.partition, a.obj.label)
	if err != nil {
		return rvErr(clusterRV(ctx, err), err.Error())
	}
	a.s.sign = &signOp{sigPlan: plan, key: key}
	return nil
}

func (c *conn) cSign(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, true)
	if err != nil {
		return err
	}
	return c.signOut(a, w, false)
}

func (c *conn) cSignUpdate(req *p11rpc.Request, _ *p11rpc.Reply) error {
	s, part, err := c.readUpdate(req)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sign == nil {
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no signature")
	}
	if err := s.sign.update(part); err != nil {
		s.sign = nil
		return err
	}
	return nil
}

func (c *conn) cSignFinal(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, false)
	if err != nil {
		return err
	}
	return c.signOut(a, w, true)
}

// signOut ends a signature (C_Sign, or C_SignFinal when final): a size query or a too-small buffer is
// answered with the length and leaves the operation active; anything else ends it.
func (c *conn) signOut(a outputArgs, w *p11rpc.Reply, final bool) error {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	op := a.s.sign
	switch {
	case op == nil:
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no signature")
	case op.multi && !final:
		a.s.sign = nil
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "C_Sign after C_SignUpdate")
	case a.sized(w, op.sigLen):
		return nil
	}
	a.s.sign = nil
	sig, err := c.sign(a.s, op, op.digest(a.data))
	if err != nil {
		return err
	}
	w.ByteArray(sig)
	return nil
}

// sign signs through the cluster and writes the access log line and the metrics.
func (c *conn) sign(s *session, op *signOp, digest []byte) ([]byte, error) {
	ctx, cancel := c.callCtx()
	defer cancel()
	start := time.Now()
	sig, dev, err := op.key.SignDevice(ctx, digest, op.signerOpts())
	if err == nil && op.mech.kind == kindECDSA {
		sig, err = rawECDSA(sig, op.sigLen/2)
	}
	code := clusterRV(ctx, err)
	c.access("sign", s, op.obj, op.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return sig, nil
}

// rawECDSA converts the cluster's ASN.1 DER ECDSA signature into PKCS#11's r||s, each coord bytes.
func rawECDSA(der []byte, coord int) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil || len(rest) > 0 || rs.R.Sign() <= 0 || rs.S.Sign() <= 0 ||
		rs.R.BitLen() > 8*coord || rs.S.BitLen() > 8*coord {
		return nil, fmt.Errorf("p11front: malformed ECDSA signature from the cluster")
	}
	out := make([]byte, 2*coord)
	rs.R.FillBytes(out[:coord])
	rs.S.FillBytes(out[coord:])
	return out, nil
}

// verifyECDSA checks a raw r||s signature (used by C_Verify).
func verifyECDSA(pk *ecdsa.PublicKey, digest, sig []byte) bool {
	n := coordLen(pk)
	if len(sig) != 2*n {
		return false
	}
	r := new(big.Int).SetBytes(sig[:n])
	s := new(big.Int).SetBytes(sig[n:])
	return ecdsa.Verify(pk, digest, r, s)
}
