package p11front

import (
	"bytes"
	"crypto"
	"crypto/rsa"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// cryptPlan is an RSA encryption or decryption set up by its Init call (CKM_RSA_PKCS or
// CKM_RSA_PKCS_OAEP with its parameters passed through).
type cryptPlan struct {
	mech  *mech
	obj   *object
	pub   *rsa.PublicKey
	oaep  *rsa.OAEPOptions // nil: PKCS#1 v1.5
	buf   []byte           // the input gathered by Update calls, at most one block
	multi bool
	// pending is the part of an Update call that asked only for its output's size (see update).
	pending    []byte
	hasPending bool
}

// newCryptPlan checks the mechanism (CKF_ENCRYPT or CKF_DECRYPT in flag) and its parameters against the
// key.
func newCryptPlan(p *p11rpc.Mechanism, o *object, flag uint64) (*cryptPlan, error) {
	m, err := mechNamed(p.Type, flag)
	if err != nil {
		return nil, err
	}
	pub, ok := o.pub.(*rsa.PublicKey)
	if !ok {
		return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, m.name+" needs an RSA key")
	}
	plan := &cryptPlan{mech: m, obj: o, pub: pub}
	if m.kind == kindOAEP {
		if plan.oaep, err = oaepOptions(p); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

// oaepOptions reads CK_RSA_PKCS_OAEP_PARAMS: the hash, the MGF1 hash and the label
// (CKZ_DATA_SPECIFIED, or no source with no label).
func oaepOptions(p *p11rpc.Mechanism) (*rsa.OAEPOptions, error) {
	if p.OAEP == nil {
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-OAEP needs CK_RSA_PKCS_OAEP_PARAMS")
	}
	h, ok := hashOfMech[p.OAEP.Hash]
	if !ok {
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-OAEP hash parameter")
	}
	mgf, ok := hashOfMGF[p.OAEP.MGF]
	if !ok {
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-OAEP MGF parameter")
	}
	if p.OAEP.Source != pkcs11.CKZ_DATA_SPECIFIED && (p.OAEP.Source != 0 || len(p.OAEP.Label) > 0) {
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-OAEP source parameter")
	}
	return &rsa.OAEPOptions{Hash: h, MGFHash: mgf, Label: p.OAEP.Label}, nil
}

// decrypterOpts are the options of the cluster's Decrypt: nil for PKCS#1 v1.5.
func (p *cryptPlan) decrypterOpts() crypto.DecrypterOpts {
	if p.oaep == nil {
		return nil
	}
	return p.oaep
}

// update adds a part of the input; an RSA operation takes one block, so more is CKR_*_LEN_RANGE.
//
// query says the caller's output buffer was NULL (a size query, which must not consume the part) — or,
// with p11-kit 0.24, which sends a zero-length buffer the same way, a real buffer of length 0. An Update
// never has output here, so applications do pass one, right after the query (miekg/pkcs11 does). So a
// queried part is held back: the next Update with the same part consumes it once, anything else consumes
// it first. Only two identical consecutive parts, the first sent with no buffer, are taken for one.
func (p *cryptPlan) update(part []byte, query bool, tooLong rv) error {
	p.multi = true
	if p.hasPending {
		same := bytes.Equal(p.pending, part)
		p.hasPending = false
		if err := p.add(p.pending, tooLong); err != nil || same {
			return err
		}
	}
	if query {
		p.pending, p.hasPending = bytes.Clone(part), true
		return nil
	}
	return p.add(part, tooLong)
}

func (p *cryptPlan) add(part []byte, tooLong rv) error {
	if len(p.buf)+len(part) > p.pub.Size() {
		return rvErr(tooLong, "input longer than one RSA block")
	}
	p.buf = append(p.buf, part...)
	return nil
}

// input is the whole input: data for a single-part call, the gathered parts for a Final call.
func (p *cryptPlan) input(data []byte, final bool) ([]byte, error) {
	if !final {
		return data, nil
	}
	if p.hasPending {
		p.hasPending = false
		if err := p.add(p.pending, pkcs11.CKR_DATA_LEN_RANGE); err != nil {
			return nil, err
		}
	}
	return p.buf, nil
}
