package p11front

import (
	"context"
	"errors"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// The outputs of the secret-key mechanisms, computed by the cluster with the access log line and the
// metrics, as a signature's are: HMAC (C_Sign, C_Verify), AES-GCM and AES-CBC-PAD (C_Encrypt, C_Decrypt).
// A MAC that does not match, a ciphertext that does not authenticate and a padding that is not valid are
// the caller's, never a device's fault (pkcs11ha.AuthError): CKR_SIGNATURE_INVALID and
// CKR_ENCRYPTED_DATA_INVALID.

// outputFunc is a family's output (family.output).
type outputFunc func(c *conn, s *session, p *opPlan, in []byte) ([]byte, error)

// secretOutput makes a family's output compute a secret-key mechanism's with the cluster's secret key.
func secretOutput(out outputFunc) outputFunc {
	return func(c *conn, s *session, p *opPlan, in []byte) ([]byte, error) {
		if p.secret == nil {
			return out(c, s, p, in)
		}
		if p.secret.gcm != nil {
			return c.gcm(s, p, in)
		}
		if p.secret.cbcIV != nil {
			return c.cbcPad(s, p, in)
		}
		return c.mac(s, p, in)
	}
}

// secretKey is the cluster's secret key of object o: CKR_KEY_HANDLE_INVALID when the cluster no longer has it.
func (c *conn) secretKey(ctx context.Context, o *object) (SecretHandle, error) {
	key, err := c.s.be.SecretKey(ctx, o.partition, o.label)
	if err != nil {
		return nil, rvErr(secretRV(ctx, err), err.Error())
	}
	return key, nil
}

// mac is HMAC's C_Sign output: the MAC computed on a device.
func (c *conn) mac(s *session, p *opPlan, data []byte) ([]byte, error) {
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.secretKey(ctx, p.obj)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	mac, dev, err := key.MACDevice(ctx, p.secret.hash, data)
	code := secretRV(ctx, err)
	c.access("mac", s, p.obj, p.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return mac, nil
}

// verifyMAC is HMAC's C_Verify: CKR_SIGNATURE_LEN_RANGE for a MAC of the wrong size (checked here, no
// device asked), CKR_SIGNATURE_INVALID for a wrong one.
func (c *conn) verifyMAC(s *session, p *opPlan, data, mac []byte) error {
	if len(mac) != p.outLen {
		return rvErr(pkcs11.CKR_SIGNATURE_LEN_RANGE, "MAC length")
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.secretKey(ctx, p.obj)
	if err != nil {
		return err
	}
	start := time.Now()
	dev, err := key.VerifyMACDevice(ctx, p.secret.hash, data, mac)
	code := secretRV(ctx, err)
	c.access("verify_mac", s, p.obj, p.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return rvErr(code, err.Error())
	}
	return nil
}

// gcm is AES-GCM's C_Encrypt (ciphertext ‖ tag) or C_Decrypt output, with the client's IV, additional
// data and tag length; the direction is the plan's (a decryption's output is shorter than its input).
func (c *conn) gcm(s *session, p *opPlan, in []byte) ([]byte, error) {
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.secretKey(ctx, p.obj)
	if err != nil {
		return nil, err
	}
	gp, op := p.secret.gcm, "encrypt"
	start := time.Now()
	var out []byte
	var dev string
	if p.secret.decrypt {
		op = "decrypt"
		out, dev, err = key.DecryptGCMDevice(ctx, gp.IV, in, gp.AAD, int(gp.TagBits))
	} else {
		out, dev, err = key.EncryptGCMDevice(ctx, gp.IV, in, gp.AAD, int(gp.TagBits))
	}
	code := secretRV(ctx, err)
	c.access(op, s, p.obj, p.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return out, nil
}

// cbcPad is AES-CBC-PAD's C_Encrypt (the padded ciphertext) or C_Decrypt output, with the client's IV.
// A ciphertext that is not whole blocks is CKR_ENCRYPTED_DATA_LEN_RANGE, no device asked.
func (c *conn) cbcPad(s *session, p *opPlan, in []byte) ([]byte, error) {
	if p.secret.decrypt && (len(in) == 0 || len(in)%pkcs11ha.CBCIVSize != 0) {
		return nil, rvErr(pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, "AES-CBC-PAD: a ciphertext of whole blocks")
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	key, err := c.secretKey(ctx, p.obj)
	if err != nil {
		return nil, err
	}
	op, start := "encrypt", time.Now()
	var out []byte
	var dev string
	if p.secret.decrypt {
		op = "decrypt"
		out, dev, err = key.DecryptCBCPadDevice(ctx, p.secret.cbcIV, in)
	} else {
		out, dev, err = key.EncryptCBCPadDevice(ctx, p.secret.cbcIV, in)
	}
	code := secretRV(ctx, err)
	c.access(op, s, p.obj, p.mech.name, dev, code, err, time.Since(start))
	if err != nil {
		return nil, rvErr(code, err.Error())
	}
	return out, nil
}

// secretRV is clusterRV for the secret keys' operations: their verdicts on the caller's input first.
func secretRV(ctx context.Context, err error) rv {
	switch {
	case errors.Is(err, pkcs11ha.ErrMACMismatch):
		return pkcs11.CKR_SIGNATURE_INVALID
	case errors.Is(err, pkcs11ha.ErrAuthentication), errors.Is(err, pkcs11ha.ErrBadPadding):
		return pkcs11.CKR_ENCRYPTED_DATA_INVALID
	}
	return clusterRV(ctx, err)
}
