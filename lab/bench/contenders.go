package bench

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// sha256DigestInfo is the DER DigestInfo prefix of a SHA-256 digest (PKCS#1 v1.5 signatures).
var sha256DigestInfo = []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}

func setEnv(env map[string]string) error {
	for k, v := range env {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// direct is the limit: miekg/pkcs11 on the module, one session per goroutine, C_SignInit + C_Sign per
// signature (miekg's Sign calls C_Sign twice: length, then data), no output conversion.
type direct struct {
	ctx  *pkcs11.Ctx
	slot uint
	key  pkcs11.ObjectHandle
	mech []*pkcs11.Mechanism
	rsa  bool
	sess []pkcs11.SessionHandle
}

func newDirect(s Spec) (contender, error) {
	d, ls, err := directLogin(s)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.close()
		}
	}()
	c := d.ctx
	if err := c.FindObjectsInit(ls, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.KeyLabel),
	}); err != nil {
		return nil, err
	}
	hs, _, err := c.FindObjects(ls, 2)
	_ = c.FindObjectsFinal(ls)
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		return nil, fmt.Errorf("%d private keys labelled %q", len(hs), s.KeyLabel)
	}
	d.key = hs[0]
	switch s.Alg {
	case ECP256:
		d.mech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	case RSA2048:
		d.mech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}
		d.rsa = true
	default:
		return nil, fmt.Errorf("unknown algorithm %q", s.Alg)
	}
	ok = true
	return d, nil
}

// directLogin loads the module, finds the token and logs a first session in; the caller closes d.
func directLogin(s Spec) (_ *direct, _ pkcs11.SessionHandle, err error) {
	if err := setEnv(s.ModuleEnv); err != nil {
		return nil, 0, err
	}
	c := pkcs11.New(s.Module)
	if c == nil {
		return nil, 0, fmt.Errorf("cannot load %s", s.Module)
	}
	if err := c.Initialize(); err != nil {
		c.Destroy()
		return nil, 0, fmt.Errorf("C_Initialize: %w", err)
	}
	d := &direct{ctx: c}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	slots, err := c.GetSlotList(true)
	if err != nil {
		return nil, 0, err
	}
	found := false
	for _, sl := range slots {
		ti, err := c.GetTokenInfo(sl)
		if err == nil && strings.TrimSpace(ti.Label) == s.TokenLabel {
			d.slot, found = sl, true
			break
		}
	}
	if !found {
		return nil, 0, fmt.Errorf("token %q not found", s.TokenLabel)
	}
	ls, err := c.OpenSession(d.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, 0, err
	}
	d.sess = append(d.sess, ls)
	if err := c.Login(ls, pkcs11.CKU_USER, s.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		return nil, 0, fmt.Errorf("C_Login: %w", err)
	}
	return d, ls, nil
}

// findObjects returns the handles of the objects matching tmpl (at most 16).
func findObjects(c *pkcs11.Ctx, s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := c.FindObjectsInit(s, tmpl); err != nil {
		return nil, err
	}
	hs, _, err := c.FindObjects(s, 16)
	_ = c.FindObjectsFinal(s)
	return hs, err
}

func (d *direct) worker(int) (signFunc, error) {
	s, err := d.ctx.OpenSession(d.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, err
	}
	d.sess = append(d.sess, s)
	var in []byte
	return func(digest []byte) ([]byte, string, error) {
		if d.rsa {
			// The DigestInfo for PKCS#1 v1.5, built per call as every signer must.
			in = append(append(in[:0], sha256DigestInfo...), digest...)
		} else {
			in = digest
		}
		if err := d.ctx.SignInit(s, d.mech, d.key); err != nil {
			return nil, "", err
		}
		sig, err := d.ctx.Sign(s, in)
		return sig, "", err
	}, nil
}

func (d *direct) close() {
	for _, s := range d.sess {
		_ = d.ctx.CloseSession(s)
	}
	_ = d.ctx.Finalize()
	d.ctx.Destroy()
}

// c11 is the peer: a crypto11 v1.6.2 Context and the Signer it finds for the key.
type c11 struct {
	ctx    *crypto11.Context
	signer crypto11.Signer
}

func newCrypto11(s Spec) (contender, error) {
	if err := setEnv(s.ModuleEnv); err != nil {
		return nil, err
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: s.Module, TokenLabel: s.TokenLabel, Pin: s.PIN})
	if err != nil {
		return nil, err
	}
	signer, err := ctx.FindKeyPair(s.KeyID, []byte(s.KeyLabel))
	if err != nil {
		_ = ctx.Close()
		return nil, err
	}
	if signer == nil {
		_ = ctx.Close()
		return nil, fmt.Errorf("key %q not found", s.KeyLabel)
	}
	return &c11{ctx: ctx, signer: signer}, nil
}

func (c *c11) worker(int) (signFunc, error) {
	return func(digest []byte) ([]byte, string, error) {
		sig, err := c.signer.Sign(randReader, digest, crypto.SHA256)
		return sig, "", err
	}, nil
}

func (c *c11) close() { _ = c.ctx.Close() }

// ha is pkcs11ha: Open on the configuration, Key, and Key.Sign (the crypto.Signer method, which puts the
// policy's operation_timeout on each call) — what an application using the library as a crypto.Signer runs.
type ha struct {
	cl  *pkcs11ha.Cluster
	key *pkcs11ha.Key
}

func newHA(s Spec) (contender, error) {
	ctx := context.Background()
	cl, err := openSpec(ctx, s)
	if err != nil {
		return nil, err
	}
	key, err := cl.Key(ctx, s.Partition, s.KeyLabel)
	if err != nil {
		cl.Close()
		return nil, err
	}
	return &ha{cl: cl, key: key}, nil
}

// openSpec opens a cluster on the spec's configuration file (the ha and haSecret contenders).
func openSpec(ctx context.Context, s Spec) (*pkcs11ha.Cluster, error) {
	cfg, err := pkcs11ha.LoadConfig(s.ConfigPath)
	if err != nil {
		return nil, err
	}
	return pkcs11ha.Open(ctx, cfg)
}

func (h *ha) worker(int) (signFunc, error) {
	// As Sign does (operation_timeout as the deadline), under a context that reports the device that served
	// (to count where the work went) at no allocation per call.
	timeout := h.cl.Config().Policy.OperationTimeout.D()
	var out pkcs11ha.Outcome
	octx := pkcs11ha.WithOutcome(context.Background(), &out)
	return func(digest []byte) ([]byte, string, error) {
		ctx, cancel := context.WithTimeout(octx, timeout)
		sig, err := h.key.SignContext(ctx, digest, crypto.SHA256)
		cancel()
		return sig, out.Device, err
	}, nil
}

func (h *ha) close() { h.cl.Close() }
