package pkcs11ha

import (
	"github.com/miekg/pkcs11"
)

// The admin path (docs/ARCHITECTURE.md, "Key management"): management operations on one partition of one
// device — generate, find, create, destroy, wrap, unwrap, change and read objects. Like deviceOp, an
// adminOp is plain data, so the same request runs on an in-process device (admin_device.go) or is
// carried to a device worker (msgAdmin, worker_wire.go). Objects are named by templates, never by
// handles: a handle means nothing in another module instance, and an instance may be replaced between
// two calls. Each op runs on one read-write session of the partition's logged-in user.

// adminKind is what an adminOp does.
type adminKind string

const (
	adminGenerateKeyPair adminKind = "generate_key_pair" // Mech; Template (public), Private; reads Read of both
	adminFind            adminKind = "find"              // Template; reads Read of every match
	adminCreate          adminKind = "create"            // Template; reads Read of the new object
	adminDestroy         adminKind = "destroy"           // Template; destroys every match after the first Keep
	adminWrap            adminKind = "wrap"              // Mech; Key (wrapping key), Template (the key to wrap) -> Data
	adminUnwrap          adminKind = "unwrap"            // Mech; Key (unwrapping key), Data, Template; reads Read
	adminSetAttributes   adminKind = "set_attributes"    // Template (exactly one match), Set
	adminRescan          adminKind = "rescan"            // lists the partition's keys again (live pickup)
)

// mutates reports whether the op can change the partition's keys: the device lists them again after it.
func (k adminKind) mutates() bool {
	switch k {
	case adminFind, adminWrap:
		return false
	}
	return true
}

// attr is one PKCS#11 attribute as plain data: its type and value bytes in the module's encoding (host
// byte order for CK_ULONG, one byte for CK_BBOOL).
type attr struct {
	Type  uint
	Value []byte `json:",omitempty"`
}

func attrBytes(t uint, v []byte) attr  { return attr{Type: t, Value: v} }
func attrString(t uint, v string) attr { return attr{Type: t, Value: []byte(v)} }

func attrBool(t uint, v bool) attr {
	if v {
		return attr{Type: t, Value: []byte{1}}
	}
	return attr{Type: t, Value: []byte{0}}
}

// attrUlong encodes a CK_ULONG as miekg/pkcs11 does (host byte order, the platform's width).
func attrUlong(t uint, v uint) attr { return attr{Type: t, Value: pkcs11.NewAttribute(t, v).Value} }

// ulongOf decodes a CK_ULONG value (little-endian hosts; see bytesToUlong).
func ulongOf(b []byte) uint { return bytesToUlong(b) }

// boolOf decodes a CK_BBOOL value.
func boolOf(b []byte) bool { return len(b) > 0 && b[0] != 0 }

// p11Attrs is a template in miekg/pkcs11's form.
func p11Attrs(as []attr) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, len(as))
	for i, a := range as {
		out[i] = &pkcs11.Attribute{Type: a.Type, Value: a.Value}
	}
	return out
}

// adminOp is one management operation on one partition of one device.
type adminOp struct {
	Kind     adminKind
	Mech     uint   `json:",omitempty"` // key generation or (un)wrapping mechanism (no parameters)
	Template []attr `json:",omitempty"`
	Private  []attr `json:",omitempty"` // generate_key_pair: the private key's template
	Key      []attr `json:",omitempty"` // wrap/unwrap: template finding the (un)wrapping key
	Set      []attr `json:",omitempty"` // set_attributes: the new values
	Data     []byte `json:",omitempty"` // unwrap: the wrapped key
	Keep     int    `json:",omitempty"` // destroy: matches kept (duplicates removed)
	Read     []uint `json:",omitempty"` // attributes to read from each object found or made
	// Mechanism parameter for RSA-OAEP wrapping (the KEK ceremony): hash and MGF, source "data specified"
	// with no data, the only form SoftHSM 2.6 accepts for C_WrapKey.
	OAEP bool `json:",omitempty"`
}

// adminResult is what an adminOp returns.
type adminResult struct {
	Objects [][]attr `json:",omitempty"` // per object found or made, the attributes of Read (Value nil: unavailable)
	Data    []byte   `json:",omitempty"` // wrap: the wrapped key
	Count   int      `json:",omitempty"` // destroy: objects destroyed
}

// mechanism returns the op's mechanism in miekg/pkcs11's form.
func (op *adminOp) mechanism() []*pkcs11.Mechanism {
	if op.OAEP {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(op.Mech, pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(op.Mech, nil)}
}

// value returns the value of attribute t in obj, or nil.
func value(obj []attr, t uint) []byte {
	for _, a := range obj {
		if a.Type == t {
			return a.Value
		}
	}
	return nil
}
