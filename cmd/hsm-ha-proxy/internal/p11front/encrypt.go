package p11front

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// encryptOp is an active encryption, done in software with the public key.
type encryptOp struct{ *cryptPlan }

func (c *conn) cEncryptInit(req *p11rpc.Request, _ *p11rpc.Reply) error {
	a, err := c.readKeyInit(req, pkcs11.CKO_PUBLIC_KEY)
	if err != nil {
		return err
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.mech == nil {
		a.s.encrypt = nil
		return nil
	}
	if a.s.encrypt != nil {
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "an encryption is active")
	}
	plan, err := newCryptPlan(a.mech, a.obj, pkcs11.CKF_ENCRYPT)
	if err != nil {
		return err
	}
	a.s.encrypt = &encryptOp{plan}
	return nil
}

func (c *conn) cEncrypt(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, true)
	if err != nil {
		return err
	}
	return c.encryptOut(a, w, false)
}

func (c *conn) cEncryptUpdate(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, true)
	if err != nil {
		return err
	}
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	op := a.s.encrypt
	if op == nil {
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no encryption")
	}
	if err := op.update(a.data, a.null, pkcs11.CKR_DATA_LEN_RANGE); err != nil {
		a.s.encrypt = nil
		return err
	}
	// No output: the ciphertext comes with C_EncryptFinal. An empty array rather than a length (even for a size
	// query) so that a caller's zero-length buffer is not answered CKR_BUFFER_TOO_SMALL.
	w.ByteArray([]byte{})
	return nil
}

func (c *conn) cEncryptFinal(req *p11rpc.Request, w *p11rpc.Reply) error {
	a, err := c.readOutput(req, false)
	if err != nil {
		return err
	}
	return c.encryptOut(a, w, true)
}

// encryptOut ends an encryption (C_Encrypt, or C_EncryptFinal when final); the output is one modulus.
func (c *conn) encryptOut(a outputArgs, w *p11rpc.Reply, final bool) error {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	op := a.s.encrypt
	switch {
	case op == nil:
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no encryption")
	case op.multi && !final:
		a.s.encrypt = nil
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "C_Encrypt after C_EncryptUpdate")
	case a.sized(w, op.pub.Size()):
		return nil
	}
	a.s.encrypt = nil
	in, err := op.input(a.data, final)
	if err != nil {
		return err
	}
	var ct []byte
	if op.oaep != nil {
		ct, err = rsa.EncryptOAEPWithOptions(rand.Reader, op.pub, in, op.oaep)
	} else {
		ct, err = rsa.EncryptPKCS1v15(rand.Reader, op.pub, in)
	}
	if errors.Is(err, rsa.ErrMessageTooLong) {
		return rvErr(pkcs11.CKR_DATA_LEN_RANGE, "message too long for the key")
	}
	if err != nil {
		return rvErr(pkcs11.CKR_FUNCTION_FAILED, err.Error())
	}
	w.ByteArray(ct)
	return nil
}
