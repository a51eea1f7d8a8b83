package p11front

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// cCreateObject ("uaA" -> "u") stores an X.509 certificate of one of the partition's keys on every device
// (pkcs11ha.Cluster.PutCertificate) and answers the handle of its certificate object. Nothing else is
// created here: the cluster holds keys as pairs (C_GenerateKeyPair makes them) and presents no lone public
// key, so any other class is CKR_ATTRIBUTE_VALUE_INVALID.
func (c *conn) cCreateObject(req *p11rpc.Request, w *p11rpc.Reply) error {
	h, tmpl := req.Ulong(), req.Attributes()
	if err := req.Finish(); err != nil {
		return err
	}
	s, ka, ctx, cancel, err := c.keyAdmin(h, "C_CreateObject")
	if err != nil {
		return err
	}
	defer cancel()
	ct, err := certTemplateOf(tmpl)
	if err != nil {
		c.log.Info("PKCS#11 C_CreateObject refused: template", "client", c.clientName(), "partition", s.partition, "err", err)
		return err
	}
	label, err := ka.PutCertificate(ctx, s.partition, ct.label, ct.id, ct.der)
	if errors.Is(err, pkcs11ha.ErrUnknownKey) {
		err = rvErr(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE: "+err.Error()) // it certifies no key of the token
	}
	if err != nil {
		return c.adminRV("C_CreateObject", s.partition, ct.label, err)
	}
	for _, o := range c.objectsIn(s.partition) {
		if v := o.attrs[pkcs11.CKA_VALUE]; o.class == pkcs11.CKO_CERTIFICATE && o.label == label && bytes.Equal(v.Value, ct.der) {
			w.Ulong(o.handle)
			c.log.Info("PKCS#11 certificate stored", "client", c.clientName(), "partition", s.partition, "key", label)
			return nil
		}
	}
	// The devices hold it, but the catalogue presents another certificate for the key (some devices
	// kept an older one and outvote it): there is no object to answer.
	c.log.Warn("PKCS#11 C_CreateObject: the certificate is on the devices but not presented", "partition", s.partition, "key", label)
	return rvErr(pkcs11.CKR_FUNCTION_FAILED, "certificate not presented")
}

// certCreate is what C_CreateObject's template of a certificate says.
type certCreate struct {
	label string
	id    []byte // nil: the key's
	der   []byte
}

// certDerived are the certificate attributes a template may carry, which must then be the certificate's
// own (the front end derives them from CKA_VALUE): subject, issuer, serial number.
var certDerived = map[uint64]func(*x509.Certificate) []byte{
	pkcs11.CKA_SUBJECT: func(c *x509.Certificate) []byte { return c.RawSubject },
	pkcs11.CKA_ISSUER:  func(c *x509.Certificate) []byte { return c.RawIssuer },
	pkcs11.CKA_SERIAL_NUMBER: func(c *x509.Certificate) []byte {
		b, _ := asn1.Marshal(c.SerialNumber)
		return b
	},
}

// certTemplateOf reads a C_CreateObject template of an X.509 certificate (what pkcs11-tool --write-object
// --type cert sends): class, type, value, label, ID, and the certificate's own subject, issuer and serial.
func certTemplateOf(tmpl []p11rpc.Attribute) (*certCreate, error) {
	ct := &certCreate{}
	byType := map[uint64]p11rpc.Attribute{}
	for _, a := range tmpl {
		if !a.Valid {
			return nil, rvErr(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, fmt.Sprintf("attribute %#x: no value", a.Type))
		}
		byType[a.Type] = a
	}
	if class, ok := byType[pkcs11.CKA_CLASS]; !ok {
		return nil, rvErr(pkcs11.CKR_TEMPLATE_INCOMPLETE, "no CKA_CLASS")
	} else if v, err := class.Ulong(); err != nil || v != pkcs11.CKO_CERTIFICATE {
		return nil, rvErr(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "only certificates are created here (key pairs: C_GenerateKeyPair)")
	}
	val, ok := byType[pkcs11.CKA_VALUE]
	if !ok || len(val.Value) == 0 {
		return nil, rvErr(pkcs11.CKR_TEMPLATE_INCOMPLETE, "no CKA_VALUE")
	}
	cert, err := x509.ParseCertificate(val.Value)
	if err != nil {
		return nil, rvErr(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE is not an X.509 certificate: "+err.Error())
	}
	ct.der = bytes.Clone(val.Value)
	for t, a := range byType {
		if err := ct.attr(t, a, cert); err != nil {
			return nil, err
		}
	}
	return ct, nil
}

// attr takes one attribute of a certificate template.
func (ct *certCreate) attr(t uint64, a p11rpc.Attribute, cert *x509.Certificate) error {
	bad := func(code rv, why string) error {
		return rvErr(code, fmt.Sprintf("certificate template: attribute %#x: %s", t, why))
	}
	switch t {
	case pkcs11.CKA_CLASS, pkcs11.CKA_VALUE, pkcs11.CKA_MODIFIABLE, pkcs11.CKA_COPYABLE, pkcs11.CKA_DESTROYABLE,
		pkcs11.CKA_PRIVATE, pkcs11.CKA_CERTIFICATE_CATEGORY, pkcs11.CKA_START_DATE, pkcs11.CKA_END_DATE:
		return nil // the class and value are read above; the rest the devices' object decides
	case pkcs11.CKA_CERTIFICATE_TYPE:
		if v, err := a.Ulong(); err != nil || v != pkcs11.CKC_X_509 {
			return bad(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "only X.509 certificates")
		}
	case pkcs11.CKA_TOKEN:
		if v, err := a.Bool(); err != nil || !v {
			return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, "the cluster keeps token objects only")
		}
	case pkcs11.CKA_TRUSTED:
		if v, err := a.Bool(); err != nil || v {
			return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, "a trusted certificate needs the security officer")
		}
	case pkcs11.CKA_LABEL:
		ct.label = string(a.Value)
	case pkcs11.CKA_ID:
		if len(a.Value) > 0 {
			ct.id = bytes.Clone(a.Value)
		}
	default:
		derive, ok := certDerived[t]
		if !ok {
			return bad(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, "not an attribute of the cluster's certificates")
		}
		if !bytes.Equal(derive(cert), a.Value) {
			return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, "not the certificate's own")
		}
	}
	return nil
}

// cDestroyObject ("uu") destroys a key on every device (pkcs11ha.Cluster.DestroyKey: a tombstone, then
// the objects): either half destroys the pair, whose other half's handle is then invalid too. A
// certificate is removed from every device (DestroyCertificate); a secret key is not destroyable here.
func (c *conn) cDestroyObject(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h, oh := req.Ulong(), req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	s, ka, ctx, cancel, err := c.keyAdmin(h, "C_DestroyObject")
	if err != nil {
		return err
	}
	defer cancel()
	o, err := c.object(s, oh, pkcs11.CKR_OBJECT_HANDLE_INVALID)
	if err != nil {
		return err
	}
	switch o.class {
	case pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY:
		if err := ka.DestroyKey(ctx, s.partition, o.label); err != nil {
			return c.adminRV("C_DestroyObject", s.partition, o.label, err)
		}
		c.s.objs.forget(s.partition, o.label, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY)
	case pkcs11.CKO_CERTIFICATE:
		if err := ka.DestroyCertificate(ctx, s.partition, o.label); err != nil {
			return c.adminRV("C_DestroyObject", s.partition, o.label, err)
		}
		c.s.objs.forget(s.partition, o.label, pkcs11.CKO_CERTIFICATE)
	default:
		return rvErr(pkcs11.CKR_ACTION_PROHIBITED, "secret keys are not destroyed through the PKCS#11 front end")
	}
	c.log.Info("PKCS#11 object destroyed", "client", c.clientName(), "partition", s.partition, "object", o.String())
	return nil
}

// cSetAttributeValue ("uuaA") renames a key (CKA_LABEL of any of its objects: the pair and its
// certificate share the label) on every device (pkcs11ha.Cluster.RenameKey); its handles keep naming it.
// Any other attribute is CKR_ATTRIBUTE_READ_ONLY; secret keys are not modifiable here.
func (c *conn) cSetAttributeValue(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h, oh, tmpl := req.Ulong(), req.Ulong(), req.Attributes()
	if err := req.Finish(); err != nil {
		return err
	}
	s, ka, ctx, cancel, err := c.keyAdmin(h, "C_SetAttributeValue")
	if err != nil {
		return err
	}
	defer cancel()
	o, err := c.object(s, oh, pkcs11.CKR_OBJECT_HANDLE_INVALID)
	if err != nil {
		return err
	}
	if o.class == pkcs11.CKO_SECRET_KEY {
		return rvErr(pkcs11.CKR_ACTION_PROHIBITED, "secret keys are not modified through the PKCS#11 front end")
	}
	label := o.label
	for _, a := range tmpl {
		if a.Type != pkcs11.CKA_LABEL {
			return rvErr(pkcs11.CKR_ATTRIBUTE_READ_ONLY, fmt.Sprintf("attribute %#x: only CKA_LABEL is changed here", a.Type))
		}
		if !a.Valid {
			return rvErr(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_LABEL: no value")
		}
		label = string(a.Value)
	}
	if label == o.label {
		return nil
	}
	if err := ka.RenameKey(ctx, s.partition, o.label, label); err != nil {
		return c.adminRV("C_SetAttributeValue", s.partition, o.label, err)
	}
	c.s.objs.relabel(s.partition, o.label, label)
	c.objectsIn(s.partition) // rebuilds the key's objects under its handles
	c.log.Info("PKCS#11 key renamed", "client", c.clientName(), "partition", s.partition, "key", o.label, "new_label", label)
	return nil
}

// keyClasses are the classes of a key pair's objects and its certificate's.
var keyClasses = []uint64{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_CERTIFICATE}

// handleOf is the handle of (partition, label, class), 0 when there is none.
func (r *registry) handleOf(partition, label string, class uint64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.handles[objKey{partition: partition, label: label, class: class}]
}

// forget drops the handles of partition's key label (of classes, all of the key's by default): they are
// invalid from now on, and a new key under the label gets new ones.
func (r *registry) forget(partition, label string, classes ...uint64) {
	if len(classes) == 0 {
		classes = keyClasses
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, class := range classes {
		k := objKey{partition: partition, label: label, class: class}
		if h, ok := r.handles[k]; ok {
			delete(r.handles, k)
			r.dropObject(h)
		}
	}
}

// relabel moves the handles of partition's key label to newLabel, so that an application's handles keep
// naming the key after a rename; its objects are rebuilt by the next listing.
func (r *registry) relabel(partition, label, newLabel string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, class := range keyClasses {
		from, to := objKey{partition: partition, label: label, class: class}, objKey{partition: partition, label: newLabel, class: class}
		if old, ok := r.handles[to]; ok { // a key once known under the new label: its handles end
			r.dropObject(old)
		}
		h, ok := r.handles[from]
		if !ok {
			delete(r.handles, to)
			continue
		}
		delete(r.handles, from)
		r.dropObject(h)
		r.handles[to] = h
	}
}

// dropObject forgets the object built for handle h and what it was built from (r.mu held); the next
// listing builds it again if the handle still names something.
func (r *registry) dropObject(h uint64) {
	delete(r.objects, h)
	delete(r.spki, h)
}
