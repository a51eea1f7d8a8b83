package p11front

import (
	"crypto/ecdsa"
	"errors"
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
	plan, err := c.planSig("C_SignInit", m, a.mech, a.obj)
	if err != nil {
		return err
	}
	key, err := c.s.be.Key(c.s.base, a.obj.partition, a.obj.label)
	if err != nil {
		return rvErr(clusterRV(c.s.base, err), err.Error())
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

// rawECDSA converts the cluster's ASN.1 DER ECDSA signature, SEQUENCE { r INTEGER, s INTEGER }, into
// PKCS#11's r||s, each coord bytes. Strict DER (minimal lengths and integers), r and s positive and at
// most coord bytes. Parsed by hand: encoding/asn1 and two big.Ints cost more than the rest of C_Sign's
// own work in the sidecar.
func rawECDSA(der []byte, coord int) ([]byte, error) {
	bad := errors.New("p11front: malformed ECDSA signature from the cluster")
	body, rest, ok := derElement(der, 0x30)
	if !ok || len(rest) > 0 {
		return nil, bad
	}
	out := make([]byte, 2*coord)
	for i := range 2 {
		var v []byte
		if v, body, ok = derElement(body, 0x02); !ok {
			return nil, bad
		}
		switch {
		case len(v) == 0 || v[0]&0x80 != 0: // empty or negative
			return nil, bad
		case v[0] == 0 && (len(v) == 1 || v[1]&0x80 == 0): // zero, or a leading zero DER forbids
			return nil, bad
		case v[0] == 0:
			v = v[1:]
		}
		if len(v) > coord {
			return nil, bad
		}
		copy(out[(i+1)*coord-len(v):(i+1)*coord], v)
	}
	if len(body) > 0 {
		return nil, bad
	}
	return out, nil
}

// derElement reads one DER element with the given tag (lengths up to 255 bytes, in their minimal form):
// its contents and what follows it.
func derElement(b []byte, tag byte) (contents, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != tag {
		return nil, nil, false
	}
	n, off := int(b[1]), 2
	switch {
	case n == 0x81:
		if len(b) < 3 || b[2] < 0x80 {
			return nil, nil, false
		}
		n, off = int(b[2]), 3
	case n >= 0x80:
		return nil, nil, false
	}
	if len(b)-off < n {
		return nil, nil, false
	}
	return b[off : off+n], b[off+n:], true
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
