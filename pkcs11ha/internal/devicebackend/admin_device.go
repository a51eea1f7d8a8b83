package devicebackend

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// The in-process device's admin path (admin.go says what an AdminOp is).

// The PKCS#11 functions of the admin path, as DeviceError.Op names them.
const (
	opGenerateKeyPair = "C_GenerateKeyPair"
	opCreateObject    = "C_CreateObject"
	opDestroyObject   = "C_DestroyObject"
	opWrapKey         = "C_WrapKey"
	opUnwrapKey       = "C_UnwrapKey"
	opSetAttribute    = "C_SetAttributeValue"
	opGetAttribute    = "C_GetAttributeValue"
)

// Admin runs op on partition pi on a read-write session of its own. The call returns at ctx's end
// whatever the module does: a call left in a hung module stays registered on its instance (the
// stuck-call accounts of stuck.go) and returns there, if ever. After an op that can change keys the
// partition's keys are listed again and the cluster told.
func (d *Device) Admin(ctx context.Context, pi int, op *AdminOp) (*AdminResult, error) {
	p := d.Parts[pi]
	st := p.St.Load()
	if st == nil {
		return nil, errclass.DownErr(d.Name, p.Cfg.Name, errclass.OpOpenSession, "partition not open")
	}
	rec, ok := st.in.begin(ctx, d)
	if !ok {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, errclass.DownErr(d.Name, p.Cfg.Name, errclass.OpOpenSession, "module instance is re-initialising")
	}
	type outcome struct {
		r   *AdminResult
		err error
	}
	done := make(chan outcome, 1)
	d.adminCalls.Add(1)
	go func() {
		defer d.adminCalls.Done()
		defer st.in.end(rec)
		r, err := p.adminOn(st, op)
		done <- outcome{r, err}
	}()
	select {
	case o := <-done:
		if o.err != nil {
			d.adminFailed(st, o.err)
		} else if op.Kind.mutates() {
			d.h.onKeys()
		}
		return o.r, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// adminFailed acts on a device-down error as runHere does: the instance takes no more calls.
func (d *Device) adminFailed(st *partState, err error) {
	var de *errclass.DeviceError
	if errors.As(err, &de) && de.Class == errclass.ClassDeviceDown && de.Code != 0 {
		d.MarkInstanceDown(st.in)
		d.h.onDown(err.Error())
	}
	d.setErr(err)
}

// adminOn runs op on a fresh read-write session of st; a lost login is restored once.
func (p *devPartition) adminOn(st *partState, op *AdminOp) (*AdminResult, error) {
	c := st.in.ctx
	s, err := c.OpenSession(st.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpOpenSession, err)
	}
	defer func() { _ = c.CloseSession(s) }()
	r, fn, err := op.exec(c, s)
	if err != nil && errclass.ClassOf(errclass.P11Err(p.dev.Name, p.Cfg.Name, fn, err)) == errclass.ClassLoginLost {
		if lerr := p.login(st); lerr != nil {
			return nil, lerr
		}
		r, fn, err = op.exec(c, s)
	}
	if err != nil {
		return nil, errclass.P11Err(p.dev.Name, p.Cfg.Name, fn, err)
	}
	if op.Kind.mutates() {
		if keys, lerr := listPrivateKeys(c, s, ""); lerr == nil {
			st.setKeys(keys)
		} else {
			p.dev.log.Warn("listing keys after an admin operation", "device", p.dev.Name, "partition", p.Cfg.Name, "err", lerr)
		}
	}
	return r, nil
}

// setKeys replaces the partition's key cache with keys (the first of a label wins, as at open).
func (st *partState) setKeys(keys []*KeyObject) {
	m := make(map[string]*KeyObject, len(keys))
	for _, k := range keys {
		if _, dup := m[k.Label]; !dup {
			m[k.Label] = k
		}
	}
	st.keysMu.Lock()
	st.keys = m
	st.keysMu.Unlock()
}

// exec runs the op on session s; it returns the PKCS#11 function that failed, for the error table.
func (op *AdminOp) exec(c *pkcs11.Ctx, s pkcs11.SessionHandle) (*AdminResult, string, error) {
	r := &AdminResult{}
	switch op.Kind {
	case AdminGenerateKeyPair:
		pub, priv, err := c.GenerateKeyPair(s, op.mechanism(), p11Attrs(op.Template), p11Attrs(op.Private))
		if err != nil {
			return nil, opGenerateKeyPair, err
		}
		r.Objects = [][]Attr{readAttrs(c, s, pub, op.Read), readAttrs(c, s, priv, op.Read)}
	case AdminFind, AdminDestroy:
		hs, err := findObjects(c, s, p11Attrs(op.Template))
		if err != nil {
			return nil, errclass.OpFindObjects, err
		}
		if op.Kind == AdminFind {
			for _, h := range hs {
				r.Objects = append(r.Objects, readAttrs(c, s, h, op.Read))
			}
			break
		}
		for i, h := range hs {
			if i < op.Keep {
				continue
			}
			if err := c.DestroyObject(s, h); err != nil {
				return nil, opDestroyObject, err
			}
			r.Count++
		}
	case AdminCreate:
		h, err := c.CreateObject(s, p11Attrs(op.Template))
		if err != nil {
			return nil, opCreateObject, err
		}
		r.Objects = [][]Attr{readAttrs(c, s, h, op.Read)}
	case AdminWrap:
		k, fn, err := findOne(c, s, op.Key, "wrapping key")
		if err != nil {
			return nil, fn, err
		}
		h, fn, err := findOne(c, s, op.Template, "key to wrap")
		if err != nil {
			return nil, fn, err
		}
		if r.Data, err = c.WrapKey(s, op.mechanism(), k, h); err != nil {
			return nil, opWrapKey, err
		}
	case AdminUnwrap:
		k, fn, err := findOne(c, s, op.Key, "unwrapping key")
		if err != nil {
			return nil, fn, err
		}
		h, err := c.UnwrapKey(s, op.mechanism(), k, op.Data, p11Attrs(op.Template))
		if err != nil {
			return nil, opUnwrapKey, err
		}
		r.Objects = [][]Attr{readAttrs(c, s, h, op.Read)}
	case AdminSetAttributes:
		h, fn, err := findOne(c, s, op.Template, "object")
		if err != nil {
			return nil, fn, err
		}
		if err := c.SetAttributeValue(s, h, p11Attrs(op.Set)); err != nil {
			return nil, opSetAttribute, err
		}
	case AdminRescan:
	default:
		return nil, "admin", errclass.InputErr("unknown admin operation %q", op.Kind)
	}
	return r, "", nil
}

// findOne returns the one object matching tmpl; none or several is the caller's error.
func findOne(c *pkcs11.Ctx, s pkcs11.SessionHandle, tmpl []Attr, what string) (pkcs11.ObjectHandle, string, error) {
	hs, err := findObjects(c, s, p11Attrs(tmpl))
	if err != nil {
		return 0, errclass.OpFindObjects, err
	}
	if len(hs) != 1 {
		return 0, errclass.OpFindObjects, &errclass.ObjectCountError{What: what, Found: len(hs)}
	}
	return hs[0], "", nil
}

// readAttrs reads the attributes ts of object h: all in one call, else one by one so that a sensitive or
// absent attribute (whose error fails the whole call) leaves only its own value nil.
func readAttrs(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle, ts []uint) []Attr {
	if len(ts) == 0 {
		return nil
	}
	q := make([]*pkcs11.Attribute, len(ts))
	for i, t := range ts {
		q[i] = pkcs11.NewAttribute(t, nil)
	}
	out := make([]Attr, len(ts))
	if got, err := c.GetAttributeValue(s, h, q); err == nil && len(got) == len(ts) {
		for i, a := range got {
			out[i] = Attr{Type: ts[i], Value: a.Value}
		}
		return out
	}
	for i, t := range ts {
		out[i] = Attr{Type: t}
		if got, err := c.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)}); err == nil && len(got) == 1 {
			out[i].Value = got[0].Value
		}
	}
	return out
}

// lookupKey finds label on the token when the partition's key cache lacks it (a key created since the
// last listing, by another replica or by hand) and caches it when its public key is want.
func (p *devPartition) lookupKey(ctx context.Context, st *partState, label string, want []byte) *KeyObject {
	s, err := st.Pool.get(ctx)
	if err != nil {
		return nil
	}
	ks, err := listPrivateKeys(st.in.ctx, s, label)
	if err != nil {
		st.Pool.discard(s)
		return nil
	}
	st.Pool.put(s)
	for _, k := range ks {
		if bytes.Equal(k.PubDER, want) {
			st.keysMu.Lock()
			st.keys[label] = k
			st.keysMu.Unlock()
			return k
		}
	}
	return nil
}

// waitAdmin waits, at most timeout, for admin calls that outlived their callers' deadlines: Close must
// not release a module with one still running in it (the instance would stay initialised).
func (d *Device) waitAdmin(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		d.adminCalls.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}
