package p11front

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// cryptPlan is the plan of an RSA encryption or decryption (CKM_RSA_PKCS, or CKM_RSA_PKCS_OAEP with
// its parameters passed through): one block in, one modulus out at most. Encryption is done in software
// with the public key; decryption goes through the cluster.
func cryptPlan(m *mech, mp *p11rpc.Mechanism, o *object) (*opPlan, error) {
	pub, ok := o.pub.(*rsa.PublicKey)
	if !ok {
		return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, m.name+" needs an RSA key")
	}
	p := &opPlan{mech: m, obj: o, maxInput: pub.Size(), outLen: pub.Size()}
	if m.kind == kindOAEP {
		var err error
		if p.oaep, err = oaepOptions(mp); err != nil {
			return nil, err
		}
	}
	return p, nil
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

// encrypt is the encryption family's output: the ciphertext, one modulus long.
func (c *conn) encrypt(_ *session, p *opPlan, in []byte) ([]byte, error) {
	pub := p.obj.pub.(*rsa.PublicKey) // cryptPlan checked
	var ct []byte
	var err error
	if p.oaep != nil {
		ct, err = rsa.EncryptOAEPWithOptions(rand.Reader, pub, in, p.oaep)
	} else {
		ct, err = rsa.EncryptPKCS1v15(rand.Reader, pub, in)
	}
	if errors.Is(err, rsa.ErrMessageTooLong) {
		return nil, rvErr(pkcs11.CKR_DATA_LEN_RANGE, "message too long for the key")
	}
	if err != nil {
		return nil, rvErr(pkcs11.CKR_FUNCTION_FAILED, err.Error())
	}
	return ct, nil
}

// decrypt is the decryption family's output: the plaintext, decrypted through the cluster, with the
// access log line and the metrics.
func (c *conn) decrypt(s *session, p *opPlan, ct []byte) ([]byte, error) {
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.clusterKey(ctx, p.obj)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var opts crypto.DecrypterOpts // nil: PKCS#1 v1.5
	if p.oaep != nil {
		opts = p.oaep
	}
	pt, dev, err := key.DecryptDevice(ctx, ct, opts)
	code := clusterRV(ctx, err)
	c.access("decrypt", s, p.obj, p.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return pt, nil
}
