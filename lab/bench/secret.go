package bench

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// Secret-key algorithms of the in-process comparison (docs/encryption.md): each operation works on the
// cell's 32-byte input, as an envelope seals a data key.
const (
	AESSeal = "AES-256-GCM seal" // Seal a 32-byte data key (a fresh nonce each)
	AESOpen = "AES-256-GCM open" // Open a 60-byte sealed data key
	HMAC256 = "HMAC-SHA256"      // MAC 32 bytes
)

var (
	benchAESKey  = softhsmtest.SecretKeySpec{Label: "aes-key", ID: []byte{0x10}, Kind: softhsmtest.KindAES256}
	benchHMACKey = softhsmtest.SecretKeySpec{Label: "hmac-key", ID: []byte{0x11}, Kind: softhsmtest.KindHMACSHA256}
)

func isSecretAlg(alg string) bool { return alg == AESSeal || alg == AESOpen || alg == HMAC256 }

// secretKeyOf is the key an algorithm's cell uses.
func secretKeyOf(alg string) softhsmtest.SecretKeySpec {
	if alg == HMAC256 {
		return benchHMACKey
	}
	return benchAESKey
}

// sealedInput is what the Open cells open: input sealed with the key's value (Spec.Secret) under a fixed
// nonce, as a stored data key would be.
func sealedInput(key, input []byte) ([]byte, error) {
	g, err := goGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 12)
	return g.Seal(nonce, nonce, input, nil), nil
}

func goGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// verifySecret checks a first output with the Go standard library and the key's value.
func verifySecret(s Spec, input, out []byte) error {
	switch s.Alg {
	case AESSeal:
		g, err := goGCM(s.Secret)
		if err != nil {
			return err
		}
		if len(out) < 12 {
			return errors.New("sealed output too short")
		}
		pt, err := g.Open(nil, out[:12], out[12:], nil)
		if err != nil || !hmac.Equal(pt, input) {
			return fmt.Errorf("the sealed output does not open to the input with Go's AES-GCM (%v)", err)
		}
	case AESOpen:
		if !hmac.Equal(out, input) {
			return errors.New("opened output is not the input")
		}
	case HMAC256:
		m := hmac.New(sha256.New, s.Secret)
		m.Write(input)
		if !hmac.Equal(m.Sum(nil), out) {
			return errors.New("MAC differs from Go's HMAC-SHA256")
		}
	}
	return nil
}

// directSecret is the limit for a secret-key cell: miekg/pkcs11 with one session per goroutine, the same
// calls an application makes (CKM_AES_GCM with a fresh nonce from crypto/rand, or CKM_SHA256_HMAC).
type directSecret struct {
	*direct
	s Spec
}

func newDirectSecret(s Spec) (contender, error) {
	d, ls, err := directLogin(s)
	if err != nil {
		return nil, err
	}
	hs, err := findObjects(d.ctx, ls, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.KeyLabel),
	})
	if err != nil || len(hs) != 1 {
		d.close()
		return nil, fmt.Errorf("secret key %q: %d found (%v)", s.KeyLabel, len(hs), err)
	}
	d.key = hs[0]
	return &directSecret{direct: d, s: s}, nil
}

func (d *directSecret) worker(int) (signFunc, error) {
	s, err := d.ctx.OpenSession(d.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, err
	}
	d.sess = append(d.sess, s)
	hmacMech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}
	sealed, err := sealedInput(d.s.Secret, benchInput(d.s))
	if err != nil && d.s.Alg == AESOpen {
		return nil, err
	}
	return func(in []byte) ([]byte, string, error) {
		switch d.s.Alg {
		case HMAC256:
			if err := d.ctx.SignInit(s, hmacMech, d.key); err != nil {
				return nil, "", err
			}
			out, err := d.ctx.Sign(s, in)
			return out, "", err
		case AESSeal:
			nonce := make([]byte, 12)
			if _, err := rand.Read(nonce); err != nil {
				return nil, "", err
			}
			out, err := d.gcm(s, d.ctx.EncryptInit, d.ctx.Encrypt, nonce, in)
			return append(nonce, out...), "", err
		default:
			out, err := d.gcm(s, d.ctx.DecryptInit, d.ctx.Decrypt, sealed[:12], sealed[12:])
			return out, "", err
		}
	}, nil
}

func (d *directSecret) gcm(s pkcs11.SessionHandle, init func(pkcs11.SessionHandle, []*pkcs11.Mechanism, pkcs11.ObjectHandle) error,
	run func(pkcs11.SessionHandle, []byte) ([]byte, error), nonce, in []byte) ([]byte, error) {
	p := pkcs11.NewGCMParams(nonce, nil, 128)
	defer p.Free()
	if err := init(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, d.key); err != nil {
		return nil, err
	}
	return run(s, in)
}

// haSecret is pkcs11ha's SecretKey: Seal, Open or MAC under the policy's operation timeout, with the
// device that served reported through WithOutcome.
type haSecret struct {
	cl  *pkcs11ha.Cluster
	key *pkcs11ha.SecretKey
	s   Spec
}

func newHASecret(s Spec) (contender, error) {
	ctx := context.Background()
	cl, err := openSpec(ctx, s)
	if err != nil {
		return nil, err
	}
	key, err := cl.SecretKey(ctx, s.Partition, s.KeyLabel)
	if err != nil {
		cl.Close()
		return nil, err
	}
	return &haSecret{cl: cl, key: key, s: s}, nil
}

func (h *haSecret) worker(int) (signFunc, error) {
	timeout := h.cl.Config().Policy.OperationTimeout.D()
	var out pkcs11ha.Outcome
	octx := pkcs11ha.WithOutcome(context.Background(), &out)
	sealed, err := sealedInput(h.s.Secret, benchInput(h.s))
	if err != nil && h.s.Alg == AESOpen {
		return nil, err
	}
	return func(in []byte) ([]byte, string, error) {
		ctx, cancel := context.WithTimeout(octx, timeout)
		defer cancel()
		var res []byte
		var err error
		switch h.s.Alg {
		case HMAC256:
			res, err = h.key.MAC(ctx, in)
		case AESSeal:
			res, err = h.key.Seal(ctx, in, nil)
		default:
			res, err = h.key.Open(ctx, sealed, nil)
		}
		return res, out.Device, err
	}, nil
}

func (h *haSecret) close() { h.cl.Close() }

// benchInput is every cell's input: what the first signature of a sign cell signs, 32 bytes.
func benchInput(s Spec) []byte {
	d := sha256.Sum256([]byte("hsm-bench " + s.Alg))
	return d[:]
}
