package p11front

import (
	"bytes"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// decryptOp is an active decryption through the cluster. A plaintext that did not fit the caller's buffer
// is kept (with the ciphertext it belongs to) for the caller's next try, so that a device is asked once.
type decryptOp struct {
	*cryptPlan
	key     KeyHandle
	done    []byte
	doneFor []byte
}

func (c *conn) cDecryptInit(req *p11rpc.Request, _ *p11rpc.Reply) error {
	a, err := c.readKeyInit(req, pkcs11.CKO_PRIVATE_KEY)
	if err != nil {
		return err
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.mech == nil {
		a.s.decrypt = nil
		return nil
	}
	if a.s.decrypt != nil {
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "a decryption is active")
	}
	plan, err := newCryptPlan(a.mech, a.obj, pkcs11.CKF_DECRYPT)
	if err != nil {
		return err
	}
	key, err := c.s.be.Key(c.s.base, a.obj.partition, a.obj.label)
	if err != nil {
		return rvErr(clusterRV(c.s.base, err), err.Error())
	}
	a.s.decrypt = &decryptOp{cryptPlan: plan, key: key}
	return nil
}

func (c *conn) cDecrypt(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, true)
	if err != nil {
		return err
	}
	return c.decryptOut(a, w, false)
}

func (c *conn) cDecryptUpdate(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, true)
	if err != nil {
		return err
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	op := a.s.decrypt
	if op == nil {
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no decryption")
	}
	if err := op.update(a.data, a.null, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE); err != nil {
		a.s.decrypt = nil
		return err
	}
	// No output: the plaintext comes with C_DecryptFinal. An empty array rather than a length (even for a size
	// query) so that a caller's zero-length buffer is not answered CKR_BUFFER_TOO_SMALL.
	w.ByteArray([]byte{})
	return nil
}

func (c *conn) cDecryptFinal(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, false)
	if err != nil {
		return err
	}
	return c.decryptOut(a, w, true)
}

// decryptOut ends a decryption (C_Decrypt, or C_DecryptFinal when final). A size query before the
// plaintext is known is answered with the modulus size (an upper bound); a buffer too small for the
// plaintext gets its exact length and the operation stays active.
func (c *conn) decryptOut(a outputArgs, w *p11rpc.Reply, final bool) error {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	op := a.s.decrypt
	switch {
	case op == nil:
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no decryption")
	case op.multi && !final:
		a.s.decrypt = nil
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "C_Decrypt after C_DecryptUpdate")
	}
	in, err := op.input(a.data, final)
	if err != nil {
		a.s.decrypt = nil
		return err
	}
	if op.done == nil || !bytes.Equal(op.doneFor, in) {
		if a.null {
			w.ByteArrayLen(uint64(op.pub.Size()))
			return nil
		}
		pt, err := c.decrypt(a.s, op, in)
		if err != nil {
			a.s.decrypt = nil
			return err
		}
		op.done, op.doneFor = pt, bytes.Clone(in)
	}
	if a.sized(w, len(op.done)) {
		return nil
	}
	a.s.decrypt = nil
	w.ByteArray(op.done)
	return nil
}

// decrypt decrypts through the cluster and writes the access log line and the metrics.
func (c *conn) decrypt(s *session, op *decryptOp, ct []byte) ([]byte, error) {
	ctx, cancel := c.callCtx()
	defer cancel()
	start := time.Now()
	pt, dev, err := op.key.DecryptDevice(ctx, ct, op.decrypterOpts())
	code := clusterRV(ctx, err)
	c.access("decrypt", s, op.obj, op.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return pt, nil
}
