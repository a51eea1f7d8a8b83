package pkcs11ha

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// The key-encryption-key ceremony of key_replication wrap (docs/keys.md, "The KEK ceremony"): a new
// AES-256 key is generated inside one device as a session object, carried to every device (itself
// included) wrapped with RSA-OAEP under a transport key pair that device generates for the occasion, and
// unwrapped there as a token object that is CKA_TRUSTED (only a security officer may set it), never
// extractable and good only for wrapping. Session objects die with the SO sessions at the end: no copy
// of the KEK is left extractable anywhere, and none ever leaves an HSM in clear. Each run makes a new
// KEK (a new CKA_ID); the sync uses any KEK two devices share.

// KEKReport says which devices received the new key-encryption key.
type KEKReport struct {
	Partition string            `json:"partition"`
	ID        string            `json:"id"`     // CKA_ID (hex) of the new KEK on every device
	Source    string            `json:"source"` // the device that generated it
	Done      []string          `json:"done"`
	Refused   map[string]string `json:"refused"` // device -> why
}

// soSession is a security officer's read-write session on one device's partition token.
type soSession struct {
	d  *devicebackend.Device
	in *devicebackend.Instance
	s  pkcs11.SessionHandle
}

// InitKEK runs the KEK ceremony for partition on every device of cfg, logging in as security officer
// with soPIN (never retried when refused, never logged). It loads its own module instances: run it
// where no cluster holds the same in-process modules (hsm-ha-proxy keys init-kek is a process of its
// own). The error is non-nil when the config is invalid or no device could generate the KEK; devices
// that refused are in the report.
func InitKEK(ctx context.Context, cfg *Config, partition, soPIN string) (*KEKReport, error) {
	if cfg == nil {
		return nil, errors.New("pkcs11ha: nil config")
	}
	s, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	pi, err := s.cfg.partIndex(partition)
	if err != nil {
		return nil, err
	}
	rep := &KEKReport{Partition: partition, Refused: map[string]string{}}
	var devs []*devicebackend.Device
	defer func() { releaseAll(devs, s.own.CloseTimeout) }()
	var sos []*soSession
	for i := range s.cfg.Devices {
		d, err := devicebackend.NewDevice(s.backend(), i, slog.New(slog.DiscardHandler))
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
			_, _ = callBounded(ctx, so.d, so.in, errclass.OpLogin, s.own.AdminTimeout, func(c *pkcs11.Ctx) (struct{}, error) {
				_ = c.Logout(so.s)
				return struct{}{}, c.CloseSession(so.s)
			})
		}
	}()
	if len(sos) == 0 {
		return rep, fmt.Errorf("pkcs11ha: init-kek: no device of partition %q accepted the security officer", partition)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	rep.ID, rep.Source = hex.EncodeToString(id), sos[0].d.Name
	src := sos[0]
	kek, err := callBounded(ctx, src.d, src.in, opGenerateKey, s.own.AdminTimeout, func(c *pkcs11.Ctx) (pkcs11.ObjectHandle, error) {
		return c.GenerateKey(src.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, devicebackend.P11Attrs([]devicebackend.Attr{
			devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), devicebackend.AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			devicebackend.AttrUlong(pkcs11.CKA_VALUE_LEN, 32), devicebackend.AttrBool(pkcs11.CKA_TOKEN, false), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, false),
			devicebackend.AttrBool(pkcs11.CKA_SENSITIVE, true), devicebackend.AttrBool(pkcs11.CKA_EXTRACTABLE, true)}))
	})
	if err != nil {
		return rep, fmt.Errorf("pkcs11ha: init-kek: generating the KEK on %s: %w", src.d.Name, err)
	}
	for _, so := range sos {
		if err := carryKEK(ctx, s, src, so, kek, id); err != nil {
			rep.Refused[so.d.Name] = err.Error()
		} else {
			rep.Done = append(rep.Done, so.d.Name)
		}
	}
	sort.Strings(rep.Done)
	return rep, nil
}

// opGenerateKey names C_GenerateKey in errors.
const opGenerateKey = "C_GenerateKey"

// openSO loads device d, finds partition pi's token and opens a security officer's session on it.
func openSO(ctx context.Context, s *settings, d *devicebackend.Device, pi int, soPIN string) (*soSession, error) {
	if lr := loadBounded(ctx, d, s.own.InitTimeout); lr.err != nil {
		return nil, lr.err
	}
	in := d.Mod.Current()
	if in == nil {
		return nil, errclass.DownErr(d.Name, "", errclass.OpInitialize, "module not loaded")
	}
	p := d.Parts[pi]
	sess, err := callBounded(ctx, d, in, errclass.OpLogin, s.own.AdminTimeout, func(c *pkcs11.Ctx) (pkcs11.SessionHandle, error) {
		slots, err := c.GetSlotList(true)
		if err != nil {
			return 0, err
		}
		for _, slot := range slots {
			if ti, err := c.GetTokenInfo(slot); err == nil && p.IsToken(ti) {
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
		return 0, fmt.Errorf("token %s not found", p.TokenName())
	})
	if err != nil {
		return nil, err
	}
	return &soSession{d: d, in: in, s: sess}, nil
}

// carryKEK puts the KEK (session object kek on src) on so's device under CKA_ID id: so generates a
// transport RSA key pair (session objects), src wraps the KEK under its public half with RSA-OAEP, so
// unwraps it as a trusted, non-extractable token key.
func carryKEK(ctx context.Context, s *settings, src, so *soSession, kek pkcs11.ObjectHandle, id []byte) error {
	oaep := (&devicebackend.AdminOp{Mech: pkcs11.CKM_RSA_PKCS_OAEP, OAEP: true}).Mechanism()
	type transport struct {
		priv     pkcs11.ObjectHandle
		mod, exp []byte
	}
	t, err := callBounded(ctx, so.d, so.in, devicebackend.OpGenerateKeyPair, s.own.AdminTimeout, func(c *pkcs11.Ctx) (transport, error) {
		pub, priv, err := c.GenerateKeyPair(so.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
			devicebackend.P11Attrs([]devicebackend.Attr{devicebackend.AttrBool(pkcs11.CKA_TOKEN, false), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, false), devicebackend.AttrUlong(pkcs11.CKA_MODULUS_BITS, 3072),
				devicebackend.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}), devicebackend.AttrBool(pkcs11.CKA_WRAP, true)}),
			devicebackend.P11Attrs([]devicebackend.Attr{devicebackend.AttrBool(pkcs11.CKA_TOKEN, false), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, false), devicebackend.AttrBool(pkcs11.CKA_SENSITIVE, true),
				devicebackend.AttrBool(pkcs11.CKA_EXTRACTABLE, false), devicebackend.AttrBool(pkcs11.CKA_UNWRAP, true)}))
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
	blob, err := callBounded(ctx, src.d, src.in, devicebackend.OpWrapKey, s.own.AdminTimeout, func(c *pkcs11.Ctx) ([]byte, error) {
		h, err := c.CreateObject(src.s, devicebackend.P11Attrs([]devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), devicebackend.AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			devicebackend.AttrBool(pkcs11.CKA_TOKEN, false), devicebackend.AttrBool(pkcs11.CKA_WRAP, true), devicebackend.AttrBytes(pkcs11.CKA_MODULUS, t.mod), devicebackend.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, t.exp)}))
		if err != nil {
			return nil, err
		}
		defer func() { _ = c.DestroyObject(src.s, h) }()
		return c.WrapKey(src.s, oaep, h, kek)
	})
	if err != nil {
		return fmt.Errorf("wrapping the KEK on %s for this device: %w", src.d.Name, err)
	}
	_, err = callBounded(ctx, so.d, so.in, devicebackend.OpUnwrapKey, s.own.AdminTimeout, func(c *pkcs11.Ctx) (pkcs11.ObjectHandle, error) {
		defer func() { _ = c.DestroyObject(so.s, t.priv) }()
		return c.UnwrapKey(so.s, oaep, t.priv, blob, devicebackend.P11Attrs([]devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			devicebackend.AttrUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), devicebackend.AttrBool(pkcs11.CKA_TOKEN, true), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, false),
			devicebackend.AttrBool(pkcs11.CKA_SENSITIVE, true), devicebackend.AttrBool(pkcs11.CKA_EXTRACTABLE, false), devicebackend.AttrBool(pkcs11.CKA_TRUSTED, true),
			devicebackend.AttrBool(pkcs11.CKA_WRAP, true), devicebackend.AttrBool(pkcs11.CKA_UNWRAP, true), devicebackend.AttrBool(pkcs11.CKA_ENCRYPT, false),
			devicebackend.AttrBool(pkcs11.CKA_DECRYPT, false), devicebackend.AttrString(pkcs11.CKA_LABEL, kekLabel), devicebackend.AttrBytes(pkcs11.CKA_ID, id)}))
	})
	if err != nil {
		return fmt.Errorf("unwrapping the KEK: %w", err)
	}
	return nil
}
