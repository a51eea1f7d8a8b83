package devicebackend

import (
	"github.com/miekg/pkcs11"
)

// The admin path (docs/ARCHITECTURE.md, "Key management"): management operations on one partition of one
// device — generate, find, create, destroy, wrap, unwrap, change and read objects. Like Op, an
// AdminOp is plain data, so the same request runs on an in-process device (admin_device.go) or is
// carried to a device worker (msgAdmin, worker_wire.go). Objects are named by templates, never by
// handles: a handle means nothing in another module instance, and an instance may be replaced between
// two calls. Each op runs on one read-write session of the partition's logged-in user.

// adminKind is what an AdminOp does.
type adminKind string

const (
	AdminGenerateKeyPair adminKind = "generate_key_pair" // Mech; Template (public), Private; reads Read of both
	AdminFind            adminKind = "find"              // Template; reads Read of every match
	AdminCreate          adminKind = "create"            // Template; reads Read of the new object
	AdminDestroy         adminKind = "destroy"           // Template; destroys every match after the first Keep
	AdminWrap            adminKind = "wrap"              // Mech; Key (wrapping key), Template (the key to wrap) -> Data
	AdminUnwrap          adminKind = "unwrap"            // Mech; Key (unwrapping key), Data, Template; reads Read
	AdminSetAttributes   adminKind = "set_attributes"    // Template (exactly one match), Set
	AdminRescan          adminKind = "rescan"            // lists the partition's keys again (live pickup)
)

// mutates reports whether the op can change the partition's keys: the device lists them again after it.
func (k adminKind) mutates() bool {
	switch k {
	case AdminFind, AdminWrap:
		return false
	}
	return true
}

// Attr is one PKCS#11 attribute as plain data: its type and value bytes in the module's encoding (host
// byte order for CK_ULONG, one byte for CK_BBOOL).
type Attr struct {
	Type  uint
	Value []byte `json:",omitempty"`
}

func AttrBytes(t uint, v []byte) Attr  { return Attr{Type: t, Value: v} }
func AttrString(t uint, v string) Attr { return Attr{Type: t, Value: []byte(v)} }

func AttrBool(t uint, v bool) Attr {
	if v {
		return Attr{Type: t, Value: []byte{1}}
	}
	return Attr{Type: t, Value: []byte{0}}
}

// AttrUlong encodes a CK_ULONG as miekg/pkcs11 does (host byte order, the platform's width).
func AttrUlong(t uint, v uint) Attr { return Attr{Type: t, Value: pkcs11.NewAttribute(t, v).Value} }

// UlongOf decodes a CK_ULONG value (little-endian hosts; see bytesToUlong).
func UlongOf(b []byte) uint { return bytesToUlong(b) }

// BoolOf decodes a CK_BBOOL value.
func BoolOf(b []byte) bool { return len(b) > 0 && b[0] != 0 }

// p11Attrs is a template in miekg/pkcs11's form.
func p11Attrs(as []Attr) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, len(as))
	for i, a := range as {
		out[i] = &pkcs11.Attribute{Type: a.Type, Value: a.Value}
	}
	return out
}

// AdminOp is one management operation on one partition of one device.
type AdminOp struct {
	Kind     adminKind
	Mech     uint   `json:",omitempty"` // key generation or (un)wrapping mechanism (no parameters)
	Template []Attr `json:",omitempty"`
	Private  []Attr `json:",omitempty"` // generate_key_pair: the private key's template
	Key      []Attr `json:",omitempty"` // wrap/unwrap: template finding the (un)wrapping key
	Set      []Attr `json:",omitempty"` // set_attributes: the new values
	Data     []byte `json:",omitempty"` // unwrap: the wrapped key
	Keep     int    `json:",omitempty"` // destroy: matches kept (duplicates removed)
	Read     []uint `json:",omitempty"` // attributes to read from each object found or made
	// Mechanism parameter for RSA-OAEP wrapping (the KEK ceremony): hash and MGF, source "data specified"
	// with no data, the only form SoftHSM 2.6 accepts for C_WrapKey.
	OAEP bool `json:",omitempty"`
}

// AdminResult is what an AdminOp returns.
type AdminResult struct {
	Objects [][]Attr `json:",omitempty"` // per object found or made, the attributes of Read (Value nil: unavailable)
	Data    []byte   `json:",omitempty"` // wrap: the wrapped key
	Count   int      `json:",omitempty"` // destroy: objects destroyed
}

// mechanism returns the op's mechanism in miekg/pkcs11's form.
func (op *AdminOp) mechanism() []*pkcs11.Mechanism {
	if op.OAEP {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(op.Mech, pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(op.Mech, nil)}
}

// Value returns the value of attribute t in obj, or nil.
func Value(obj []Attr, t uint) []byte {
	for _, a := range obj {
		if a.Type == t {
			return a.Value
		}
	}
	return nil
}
