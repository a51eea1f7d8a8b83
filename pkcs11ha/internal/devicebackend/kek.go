package devicebackend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sort"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// soSession is a security officer's read-write session on one device's partition token.
type soSession struct {
	d  *Device
	in *Instance
	s  pkcs11.SessionHandle
}

// opGenerateKey names C_GenerateKey in errors.
const opGenerateKey = "C_GenerateKey"

// openSO loads device d, finds partition pi's token and opens a security officer's session on it.
func openSO(ctx context.Context, s *Settings, d *Device, pi int, soPIN string) (*soSession, error) {
	if lr := loadBounded(ctx, d, s.Own.InitTimeout); lr.err != nil {
		return nil, lr.err
	}
	in := d.Mod.Current()
	if in == nil {
		return nil, errclass.DownErr(d.Name, "", errclass.OpInitialize, "module not loaded")
	}
	p := d.Parts[pi]
	sess, err := callBounded(ctx, d, in, errclass.OpLogin, s.Own.AdminTimeout, func(c *pkcs11.Ctx) (pkcs11.SessionHandle, error) {
		slots, err := c.GetSlotList(true)
		if err != nil {
			return 0, err
		}
		for _, slot := range slots {
			if ti, err := c.GetTokenInfo(slot); err == nil && p.isToken(ti) {
				sh, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
				if err != nil {
					return 0, err
				}
				if err := c.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
					_ = c.CloseSession(sh)
					return 0, err
				}
				return sh, nil
			}
		}
		return 0, fmt.Errorf("token %s not found", p.tokenName())
	})
	if err != nil {
		return nil, err
	}
	return &soSession{d: d, in: in, s: sess}, nil
}

// carryKEK puts the KEK (session object kek on src) on so's device under CKA_ID id and label: so generates a
// transport RSA key pair (session objects), src wraps the KEK under its public half with RSA-OAEP, so
// unwraps it as a trusted, non-extractable token key.
func carryKEK(ctx context.Context, s *Settings, src, so *soSession, kek pkcs11.ObjectHandle, id []byte, label string) error {
	oaep := (&AdminOp{Mech: pkcs11.CKM_RSA_PKCS_OAEP, OAEP: true}).mechanism()
	type transport struct {
		priv     pkcs11.ObjectHandle
		mod, exp []byte
	}
	t, err := callBounded(ctx, so.d, so.in, opGenerateKeyPair, s.Own.AdminTimeout, func(c *pkcs11.Ctx) (transport, error) {
		pub, priv, err := c.GenerateKeyPair(so.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
			p11Attrs([]Attr{AttrBool(pkcs11.CKA_TOKEN, false), AttrBool(pkcs11.CKA_PRIVATE, false), AttrUlong(pkcs11.CKA_MODULUS_BITS, 3072),
				AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}), AttrBool(pkcs11.CKA_WRAP, true)}),
			p11Attrs([]Attr{AttrBool(pkcs11.CKA_TOKEN, false), AttrBool(pkcs11.CKA_PRIVATE, false), AttrBool(pkcs11.CKA_SENSITIVE, true),
				AttrBool(pkcs11.CKA_EXTRACTABLE, false), AttrBool(pkcs11.CKA_UNWRAP, true)}))
		if err != nil {
			return transport{}, err
		}
		a, err := c.GetAttributeValue(so.s, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil)})
		if err != nil {
			return transport{}, err
		}
		return transport{priv: priv, mod: a[0].Value, exp: a[1].Value}, nil
	})
	if err != nil {
		return fmt.Errorf("transport key pair: %w", err)
	}
	blob, err := callBounded(ctx, src.d, src.in, opWrapKey, s.Own.AdminTimeout, func(c *pkcs11.Ctx) ([]byte, error) {
		h, err := c.CreateObject(src.s, p11Attrs([]Attr{AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			AttrBool(pkcs11.CKA_TOKEN, false), AttrBool(pkcs11.CKA_WRAP, true), AttrBytes(pkcs11.CKA_MODULUS, t.mod), AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, t.exp)}))
		if err != nil {
			return nil, err
		}
		defer func() { _ = c.DestroyObject(src.s, h) }()
		return c.WrapKey(src.s, oaep, h, kek)
	})
	if err != nil {
		return fmt.Errorf("wrapping the KEK on %s for this device: %w", src.d.Name, err)
	}
	_, err = callBounded(ctx, so.d, so.in, opUnwrapKey, s.Own.AdminTimeout, func(c *pkcs11.Ctx) (pkcs11.ObjectHandle, error) {
		defer func() { _ = c.DestroyObject(so.s, t.priv) }()
		return c.UnwrapKey(so.s, oaep, t.priv, blob, p11Attrs([]Attr{AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), AttrBool(pkcs11.CKA_TOKEN, true), AttrBool(pkcs11.CKA_PRIVATE, false),
			AttrBool(pkcs11.CKA_SENSITIVE, true), AttrBool(pkcs11.CKA_EXTRACTABLE, false), AttrBool(pkcs11.CKA_TRUSTED, true),
			AttrBool(pkcs11.CKA_WRAP, true), AttrBool(pkcs11.CKA_UNWRAP, true), AttrBool(pkcs11.CKA_ENCRYPT, false),
			AttrBool(pkcs11.CKA_DECRYPT, false), AttrString(pkcs11.CKA_LABEL, label), AttrBytes(pkcs11.CKA_ID, id)}))
	})
	if err != nil {
		return fmt.Errorf("unwrapping the KEK: %w", err)
	}
	return nil
}

// KEKResult is what the KEK ceremony did: the new KEK's CKA_ID (hex) and the device that generated it,
// the devices that received it and those that refused (device -> why).
type KEKResult struct {
	ID      string
	Source  string
	Done    []string
	Refused map[string]string
}

// InitKEK is the device side of the library's InitKEK (docs/keys.md, "The KEK ceremony"): it makes every
// device of s, logs in as security officer on partition pi with soPIN, generates the KEK on the first
// device that accepted and carries it, labelled label, to every one of them. The result is nil only with
// a device's config error.
func InitKEK(ctx context.Context, s *Settings, pi int, soPIN, label string) (*KEKResult, error) {
	rep := &KEKResult{Refused: map[string]string{}}
	var devs []*Device
	defer func() { releaseAll(devs, s.Own.CloseTimeout) }()
	var sos []*soSession
	for i := range s.Devices {
		d, err := NewDevice(s, i, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
		so, err := openSO(ctx, s, d, pi, soPIN)
		if err != nil {
			rep.Refused[d.Name] = err.Error()
			continue
		}
		sos = append(sos, so)
	}
	defer func() {
		for _, so := range sos {
			_, _ = callBounded(ctx, so.d, so.in, errclass.OpLogin, s.Own.AdminTimeout, func(c *pkcs11.Ctx) (struct{}, error) {
				_ = c.Logout(so.s)
				return struct{}{}, c.CloseSession(so.s)
			})
		}
	}()
	if len(sos) == 0 {
		return rep, fmt.Errorf("pkcs11ha: init-kek: no device of partition %q accepted the security officer", s.Partitions[pi].Name)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	rep.ID, rep.Source = hex.EncodeToString(id), sos[0].d.Name
	src := sos[0]
	kek, err := callBounded(ctx, src.d, src.in, opGenerateKey, s.Own.AdminTimeout, func(c *pkcs11.Ctx) (pkcs11.ObjectHandle, error) {
		return c.GenerateKey(src.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, p11Attrs([]Attr{
			AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			AttrUlong(pkcs11.CKA_VALUE_LEN, 32), AttrBool(pkcs11.CKA_TOKEN, false), AttrBool(pkcs11.CKA_PRIVATE, false),
			AttrBool(pkcs11.CKA_SENSITIVE, true), AttrBool(pkcs11.CKA_EXTRACTABLE, true)}))
	})
	if err != nil {
		return rep, fmt.Errorf("pkcs11ha: init-kek: generating the KEK on %s: %w", src.d.Name, err)
	}
	for _, so := range sos {
		if err := carryKEK(ctx, s, src, so, kek, id, label); err != nil {
			rep.Refused[so.d.Name] = err.Error()
		} else {
			rep.Done = append(rep.Done, so.d.Name)
		}
	}
	sort.Strings(rep.Done)
	return rep, nil
}
