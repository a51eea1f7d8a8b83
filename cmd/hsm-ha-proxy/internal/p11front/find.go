package p11front

import (
	"bytes"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// findOp is an active C_FindObjects search: the handles that matched, and how many were handed out.
// Plain data (see opState).
type findOp struct {
	Handles []uint64
	Pos     int
}

// objectsIn returns the objects of partition's keys now: key pairs, certificates, secret keys.
func (c *conn) objectsIn(partition string) []*object {
	infos, err := c.s.be.Keys(partition)
	if err != nil {
		c.log.Warn("PKCS#11: listing the keys of a partition failed", "partition", partition, "err", err)
		return nil
	}
	objs, skipped := c.s.objs.objectsOf(partition, infos)
	for _, label := range skipped {
		c.log.Info("PKCS#11: key not presented (Ed25519 cannot travel over p11-kit's RPC; use the library or the HTTP API)",
			"partition", partition, "key", label)
	}
	return append(objs, c.secretObjectsIn(partition)...)
}

// grantedObject is object h of granted session sh (C_GetAttributeValue, C_GetObjectSize).
func (c *conn) grantedObject(sh, h uint64) (*object, error) {
	s, err := c.grantedSession(sh)
	if err != nil {
		return nil, err
	}
	return c.object(s, h, pkcs11.CKR_OBJECT_HANDLE_INVALID)
}

func (c *conn) cFindObjectsInit(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h, tmpl := req.Ulong(), req.Attributes()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.grantedSession(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops.Find != nil {
		return rvErr(pkcs11.CKR_OPERATION_ACTIVE, "a search is active")
	}
	op := &findOp{}
	for _, o := range c.objectsIn(s.partition) {
		if o.matches(tmpl) {
			op.Handles = append(op.Handles, o.handle)
		}
	}
	s.ops.Find = op
	return nil
}

// matches tells whether every attribute of the template has the object's value. An attribute the
// object lacks, or one it never reveals, matches nothing.
func (o *object) matches(tmpl []p11rpc.Attribute) bool {
	for _, t := range tmpl {
		a, ok := o.attrs[t.Type]
		if !ok || !t.Valid || !sameValue(o.kinds[t.Type], a, t) {
			return false
		}
	}
	return true
}

// sameValue compares an object's attribute with a template's, by the attribute's kind: CK_ULONG and
// CK_BBOOL by value (a client's CK_BBOOL true may be any non-zero byte), the others byte for byte.
func sameValue(kind attrKind, a, t p11rpc.Attribute) bool {
	switch kind {
	case kindUlong:
		av, err1 := a.Ulong()
		tv, err2 := t.Ulong()
		return err1 == nil && err2 == nil && av == tv
	case kindBool:
		av, err1 := a.Bool()
		tv, err2 := t.Bool()
		return err1 == nil && err2 == nil && av == tv
	}
	return bytes.Equal(a.Value, t.Value)
}

func (c *conn) cFindObjects(req *p11rpc.Request, w *p11rpc.Reply) error {
	h := req.Ulong()
	n, null := req.UlongBuffer()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.sess.get(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.ops.Find
	switch {
	case op == nil:
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no search")
	case null:
		return rvErr(pkcs11.CKR_ARGUMENTS_BAD, "no buffer for the handles")
	}
	end := min(len(op.Handles), op.Pos+int(min(n, uint64(len(op.Handles)))))
	w.UlongArray(op.Handles[op.Pos:end])
	op.Pos = end
	return nil
}

func (c *conn) cFindObjectsFinal(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	s, err := c.sess.get(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops.Find == nil {
		return rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no search")
	}
	s.ops.Find = nil
	return nil
}

// cGetAttributeValue answers each attribute as PKCS#11 says (v2.40 §5.7): a value that never leaves the
// token (CKA_PRIVATE_EXPONENT, CKA_VALUE of a private key, ...) is unavailable with
// CKR_ATTRIBUTE_SENSITIVE, one the object does not have with CKR_ATTRIBUTE_TYPE_INVALID, one that does not
// fit the caller's buffer with CKR_BUFFER_TOO_SMALL; a NULL buffer gets the length; the others get their
// value. Every attribute is answered whatever happens to the others.
func (c *conn) cGetAttributeValue(req *p11rpc.Request, w *p11rpc.Reply) error {
	h, oh, tmpl := req.Ulong(), req.Ulong(), req.AttributeBuffer()
	if err := req.Finish(); err != nil {
		return err
	}
	o, err := c.grantedObject(h, oh)
	if err != nil {
		return err
	}
	out := make([]p11rpc.Attribute, len(tmpl))
	result := ckrOK
	for i, t := range tmpl {
		var code rv
		out[i], code = o.answer(t)
		if code != ckrOK {
			result = code
		}
	}
	w.Attributes(out)
	w.Ulong(result)
	return nil
}

// answer is one attribute of C_GetAttributeValue and its CK_RV.
func (o *object) answer(t p11rpc.AttributeRequest) (p11rpc.Attribute, rv) {
	if o.sensitive[t.Type] {
		return p11rpc.AttrInvalid(t.Type), pkcs11.CKR_ATTRIBUTE_SENSITIVE
	}
	a, ok := o.attrs[t.Type]
	switch {
	case !ok:
		return p11rpc.AttrInvalid(t.Type), pkcs11.CKR_ATTRIBUTE_TYPE_INVALID
	case t.Null:
		return p11rpc.AttrSize(t.Type, a.CLen()), ckrOK
	case t.Len < a.CLen():
		return p11rpc.AttrInvalid(t.Type), pkcs11.CKR_BUFFER_TOO_SMALL
	}
	return a, ckrOK
}

func (c *conn) cGetObjectSize(req *p11rpc.Request, w *p11rpc.Reply) error {
	h, oh := req.Ulong(), req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	o, err := c.grantedObject(h, oh)
	if err != nil {
		return err
	}
	w.Ulong(o.size)
	return nil
}
