package p11front

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"math/big"
	"time"
)

// sign is the signature family's output: the digest (or raw input) signed through the cluster, with the
// access log line and the metrics; an ECDSA signature in PKCS#11's r||s form.
func (c *conn) sign(s *session, p *opPlan, digest []byte) ([]byte, error) {
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.clusterKey(ctx, p.obj)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sig, dev, err := key.SignDevice(ctx, digest, p.signerOpts())
	if err == nil && p.mech.kind == kindECDSA {
		sig, err = rawECDSA(sig, p.outLen/2)
	}
	code := clusterRV(ctx, err)
	c.access("sign", s, p.obj, p.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return sig, nil
}

// clusterKey is the cluster's key of object o: CKR_KEY_HANDLE_INVALID when the cluster no longer has it.
func (c *conn) clusterKey(ctx context.Context, o *object) (KeyHandle, error) {
	key, err := c.s.be.Key(ctx, o.partition, o.label)
	if err != nil {
		return nil, rvErr(clusterRV(ctx, err), err.Error())
	}
	return key, nil
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
