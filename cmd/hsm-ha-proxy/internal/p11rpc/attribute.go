package p11rpc

import (
	"encoding/binary"
	"fmt"
)

// Attribute is one CK_ATTRIBUTE of a template ('aA'), as a client sent it or as the server answers it.
//
// Value never depends on the client's byte order or word size. By the kind of Type (KindOf):
//   - KindBool (CKA_SIGN, CKA_TOKEN, ...): 1 byte, 0 or 1 (CK_BBOOL);
//   - KindUlong (CKA_CLASS, CKA_KEY_TYPE, CKA_MODULUS_BITS, ...): 8 bytes big-endian;
//   - KindDate (CKA_START_DATE, CKA_END_DATE): 0 or 8 ASCII bytes "YYYYMMDD";
//   - KindMechanisms (CKA_ALLOWED_MECHANISMS): 8 bytes big-endian per mechanism;
//   - KindTemplate (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE): Value is nil and the nested
//     attributes are in Template;
//   - KindBytes (everything else: CKA_LABEL, CKA_ID, CKA_MODULUS, CKA_EC_POINT, CKA_VALUE, ...): the bytes.
//
// Build values with AttrUlong, AttrBool, AttrBytes, AttrTemplate and read them with Attribute.Ulong and
// Attribute.Bool rather than by hand.
type Attribute struct {
	Type uint64
	// Valid false is ulValueLen = CK_UNAVAILABLE_INFORMATION: on the wire only the type and a 0 byte travel
	// (the answer for an invalid, sensitive or too-small attribute in C_GetAttributeValue).
	Valid bool
	// Len is the ulValueLen on the wire. Decoded from a request: what the client sent (8 for a CK_ULONG from a
	// 64-bit client; 0 is an empty value: Value is then empty, or nil when the client sent a NULL array).
	// Encoding: 0 means CLen(); a valid attribute with nil Value and nil Template announces Len alone, the
	// answer to a size query.
	Len      uint64
	Value    []byte
	Template []Attribute
}

// AttributeRequest is one entry of an 'fA' (C_GetAttributeValue's template): the attribute asked for and the
// size of the caller's buffer.
type AttributeRequest struct {
	Type uint64
	Len  uint64 // the caller's buffer size; 0 when Null
	Null bool   // the caller's pValue is NULL (or its buffer is 0 bytes): it asks for the length only
}

// ValueKind is how an attribute's value is carried on the wire; it depends only on the attribute type.
type ValueKind uint8

// The value kinds of rpc-message.c (map_attribute_to_value_type).
const (
	KindBytes      ValueKind = iota // a byte array
	KindBool                        // one byte
	KindUlong                       // a uint64
	KindDate                        // a byte array of 0 or 8 bytes
	KindMechanisms                  // a uint32 count, then a uint64 per mechanism
	KindTemplate                    // a uint32 count, then nested attributes
)

func (k ValueKind) String() string {
	switch k {
	case KindBool:
		return "bool"
	case KindUlong:
		return "ulong"
	case KindDate:
		return "date"
	case KindMechanisms:
		return "mechanisms"
	case KindTemplate:
		return "template"
	}
	return "bytes"
}

// The attribute types whose value is not a plain byte array, from p11-kit's map_attribute_to_value_type.
// since1 marks types p11-kit added in 0.25.0 (protocol version 1): a version 0 client (0.24) sends them as
// byte arrays.
var attrKinds = map[uint64]struct {
	kind   ValueKind
	since1 bool
}{
	0x000: {KindUlong, false}, // CKA_CLASS
	0x001: {KindBool, false},  // CKA_TOKEN
	0x002: {KindBool, false},  // CKA_PRIVATE
	0x080: {KindUlong, false}, // CKA_CERTIFICATE_TYPE
	0x086: {KindBool, false},  // CKA_TRUSTED
	0x087: {KindUlong, false}, // CKA_CERTIFICATE_CATEGORY
	0x088: {KindUlong, false}, // CKA_JAVA_MIDP_SECURITY_DOMAIN
	0x100: {KindUlong, false}, // CKA_KEY_TYPE
	0x103: {KindBool, false},  // CKA_SENSITIVE
	0x104: {KindBool, false},  // CKA_ENCRYPT
	0x105: {KindBool, false},  // CKA_DECRYPT
	0x106: {KindBool, false},  // CKA_WRAP
	0x107: {KindBool, false},  // CKA_UNWRAP
	0x108: {KindBool, false},  // CKA_SIGN
	0x109: {KindBool, false},  // CKA_SIGN_RECOVER
	0x10a: {KindBool, false},  // CKA_VERIFY
	0x10b: {KindBool, false},  // CKA_VERIFY_RECOVER
	0x10c: {KindBool, false},  // CKA_DERIVE
	0x110: {KindDate, false},  // CKA_START_DATE
	0x111: {KindDate, false},  // CKA_END_DATE
	0x121: {KindUlong, false}, // CKA_MODULUS_BITS
	0x133: {KindUlong, false}, // CKA_PRIME_BITS
	0x134: {KindUlong, false}, // CKA_SUB_PRIME_BITS
	0x160: {KindUlong, false}, // CKA_VALUE_BITS
	0x161: {KindUlong, false}, // CKA_VALUE_LEN
	0x162: {KindBool, false},  // CKA_EXTRACTABLE
	0x163: {KindBool, false},  // CKA_LOCAL
	0x164: {KindBool, false},  // CKA_NEVER_EXTRACTABLE
	0x165: {KindBool, false},  // CKA_ALWAYS_SENSITIVE
	0x166: {KindUlong, false}, // CKA_KEY_GEN_MECHANISM
	0x170: {KindBool, false},  // CKA_MODIFIABLE
	0x171: {KindBool, false},  // CKA_COPYABLE
	0x200: {KindBool, false},  // CKA_SECONDARY_AUTH
	0x201: {KindUlong, false}, // CKA_AUTH_PIN_FLAGS
	0x202: {KindBool, false},  // CKA_ALWAYS_AUTHENTICATE
	0x210: {KindBool, false},  // CKA_WRAP_WITH_TRUSTED
	0x300: {KindUlong, false}, // CKA_HW_FEATURE_TYPE
	0x301: {KindBool, false},  // CKA_RESET_ON_INIT
	0x302: {KindBool, false},  // CKA_HAS_RESET
	0x400: {KindUlong, false}, // CKA_PIXEL_X
	0x401: {KindUlong, false}, // CKA_PIXEL_Y
	0x402: {KindUlong, false}, // CKA_RESOLUTION
	0x403: {KindUlong, false}, // CKA_CHAR_ROWS
	0x404: {KindUlong, false}, // CKA_CHAR_COLUMNS
	0x405: {KindBool, false},  // CKA_COLOR
	0x406: {KindUlong, false}, // CKA_BITS_PER_PIXEL
	0x500: {KindUlong, false}, // CKA_MECHANISM_TYPE

	0x40000211: {KindTemplate, false},   // CKA_WRAP_TEMPLATE
	0x40000212: {KindTemplate, false},   // CKA_UNWRAP_TEMPLATE
	0x40000213: {KindTemplate, true},    // CKA_DERIVE_TEMPLATE
	0x40000600: {KindMechanisms, false}, // CKA_ALLOWED_MECHANISMS

	// IBM vendor attributes (p11-kit 0.25.0+).
	0x80010001: {KindBool, true},  // CKA_IBM_RESTRICTABLE
	0x80010002: {KindBool, true},  // CKA_IBM_NEVER_MODIFIABLE
	0x80010003: {KindBool, true},  // CKA_IBM_RETAINKEY
	0x80010004: {KindBool, true},  // CKA_IBM_ATTRBOUND
	0x80010005: {KindUlong, true}, // CKA_IBM_KEYTYPE
	0x80010008: {KindBool, true},  // CKA_IBM_USE_AS_DATA
	0x8001000a: {KindUlong, true}, // CKA_IBM_STD_COMPLIANCE1
	0x8001000c: {KindBool, true},  // CKA_IBM_PROTKEY_EXTRACTABLE
	0x8001000d: {KindBool, true},  // CKA_IBM_PROTKEY_NEVER_EXTRACTABLE
	0x800d0001: {KindUlong, true}, // CKA_IBM_DILITHIUM_KEYFORM
	0x800d0009: {KindUlong, true}, // CKA_IBM_KYBER_KEYFORM
	0x800d0101: {KindUlong, true}, // CKA_IBM_CCA_AES_KEY_MODE
}

// KindOf is the value kind of attribute type t as p11-kit 0.25+ (protocol versions 1 and 2) carries it.
func KindOf(t uint64) ValueKind { return kindOf(t, MaxVersion) }

// kindOf is the value kind of t for a connection speaking version: a version 0 client (p11-kit 0.24) knows
// neither CKA_DERIVE_TEMPLATE nor the IBM attributes and sends them as byte arrays.
func kindOf(t uint64, version byte) ValueKind {
	k, ok := attrKinds[t]
	if !ok || (k.since1 && version == 0) {
		return KindBytes
	}
	return k.kind
}

// isTemplateType is p11-kit's IS_ATTRIBUTE_ARRAY: the types whose 'fA' buffer entries nest (0.25.4+).
func isTemplateType(t uint64) bool {
	return t == 0x40000211 || t == 0x40000212 || t == 0x40000213
}

// sizeofAttribute is sizeof(CK_ATTRIBUTE) on a 64-bit client: a template's ulValueLen is count × this.
const sizeofAttribute = 24

// maxDepth bounds nested templates, as p11-kit 0.26.3+ does (P11_RPC_MAX_RECURSION_DEPTH).
const maxDepth = 8

// AttrUlong is a CK_ULONG attribute (CKA_CLASS, CKA_KEY_TYPE, CKA_MODULUS_BITS, ...).
func AttrUlong(t uint64, v uint64) Attribute {
	return Attribute{Type: t, Valid: true, Value: binary.BigEndian.AppendUint64(nil, v)}
}

// AttrBool is a CK_BBOOL attribute (CKA_SIGN, CKA_TOKEN, CKA_SENSITIVE, ...).
func AttrBool(t uint64, v bool) Attribute {
	b := byte(0)
	if v {
		b = 1
	}
	return Attribute{Type: t, Valid: true, Value: []byte{b}}
}

// AttrBytes is a byte-array attribute (CKA_LABEL, CKA_ID, CKA_MODULUS, CKA_EC_POINT, ...). A nil v is sent as
// an empty value.
func AttrBytes(t uint64, v []byte) Attribute {
	if v == nil {
		v = []byte{}
	}
	return Attribute{Type: t, Valid: true, Value: v}
}

// AttrTemplate is a template-valued attribute (CKA_WRAP_TEMPLATE, ...). p11-kit 0.24 clients cannot decode
// one in a reply (they fail the whole call); Reply refuses it on a version 0 connection.
func AttrTemplate(t uint64, nested []Attribute) Attribute {
	if nested == nil {
		nested = []Attribute{}
	}
	return Attribute{Type: t, Valid: true, Template: nested}
}

// AttrInvalid is an attribute whose ulValueLen is CK_UNAVAILABLE_INFORMATION: C_GetAttributeValue's answer
// for a type the object does not have (with CKR_ATTRIBUTE_TYPE_INVALID), a sensitive one
// (CKR_ATTRIBUTE_SENSITIVE) or a buffer too small for the value (CKR_BUFFER_TOO_SMALL).
func AttrInvalid(t uint64) Attribute { return Attribute{Type: t} }

// AttrSize answers a size query (AttributeRequest.Null) with the value's length n, normally the value's
// CLen(), without the value.
func AttrSize(t uint64, n uint64) Attribute { return Attribute{Type: t, Valid: true, Len: n} }

// Ulong is the value of a KindUlong attribute.
func (a Attribute) Ulong() (uint64, error) {
	if !a.Valid || len(a.Value) != 8 {
		return 0, fmt.Errorf("p11rpc: attribute %#x is not a CK_ULONG value (%d bytes)", a.Type, len(a.Value))
	}
	return binary.BigEndian.Uint64(a.Value), nil
}

// Bool is the value of a KindBool attribute; any non-zero byte is true, as in C.
func (a Attribute) Bool() (bool, error) {
	if !a.Valid || len(a.Value) != 1 {
		return false, fmt.Errorf("p11rpc: attribute %#x is not a CK_BBOOL value (%d bytes)", a.Type, len(a.Value))
	}
	return a.Value[0] != 0, nil
}

// CLen is the ulValueLen a 64-bit C caller needs for the value: 8 for a CK_ULONG, 1 for a CK_BBOOL, the byte
// count for byte arrays and dates, 8 per mechanism, 24 per nested attribute. Compare it with an
// AttributeRequest's Len, and answer a size query with it.
func (a Attribute) CLen() uint64 {
	if a.Template != nil {
		return uint64(len(a.Template)) * sizeofAttribute
	}
	return uint64(len(a.Value))
}

// decodeAttribute reads one 'A' (rpc-message.c p11_rpc_buffer_get_attribute): type u32, validity byte, then
// for a valid one the length u32 and the value by kind.
func (d *decoder) attribute(version byte, depth int) (Attribute, error) {
	t, err := d.u32("attribute type")
	if err != nil {
		return Attribute{}, err
	}
	a := Attribute{Type: uint64(t)}
	valid, err := d.byte1("attribute validity")
	if err != nil {
		return Attribute{}, err
	}
	switch valid {
	case 0:
		return a, nil
	case 1:
	default:
		d.off--
		return Attribute{}, d.fail("attribute %#x: validity byte %d", t, valid)
	}
	a.Valid = true
	n, err := d.u32("attribute length")
	if err != nil {
		return Attribute{}, err
	}
	a.Len = uint64(n)
	start := d.off
	if err := d.attributeValue(&a, version, depth); err != nil {
		return Attribute{}, err
	}
	// p11-kit refuses a value longer than the length announced, except that a length of 0 is an empty value
	// (pValue NULL, ulValueLen 0), whatever followed: Value is then empty, or nil for a NULL array.
	if a.Len == 0 {
		if a.Value != nil || a.Template != nil {
			a.Value = []byte{}
		}
		a.Template = nil
	} else if a.CLen() > a.Len {
		d.off = start
		return Attribute{}, d.fail("attribute %#x: value of %d bytes over its length %d", t, a.CLen(), a.Len)
	}
	return a, nil
}

func (d *decoder) attributeValue(a *Attribute, version byte, depth int) error {
	switch kindOf(a.Type, version) {
	case KindBool:
		b, err := d.byte1("bool value")
		if err != nil {
			return err
		}
		a.Value = []byte{b}
	case KindUlong:
		if err := d.need(8, "ulong value"); err != nil {
			return err
		}
		a.Value = d.b[d.off : d.off+8 : d.off+8]
		d.off += 8
	case KindDate:
		v, err := d.bytes("date value")
		if err != nil {
			return err
		}
		if len(v) != 0 && len(v) != 8 {
			return d.fail("attribute %#x: date of %d bytes", a.Type, len(v))
		}
		a.Value = v
	case KindMechanisms:
		n, err := d.count("mechanism count", 8)
		if err != nil {
			return err
		}
		a.Value = d.b[d.off : d.off+8*n : d.off+8*n]
		d.off += 8 * n
	case KindTemplate:
		if depth >= maxDepth {
			return d.fail("attribute %#x: templates nested deeper than %d", a.Type, maxDepth)
		}
		attrs, err := d.attributes(version, depth+1)
		if err != nil {
			return err
		}
		a.Template = attrs
	default:
		v, err := d.bytes("byte array value")
		if err != nil {
			return err
		}
		a.Value = v
	}
	return nil
}

// attributes reads an 'aA': a u32 count, then the attributes. Each takes at least 5 bytes (type, validity),
// which bounds the count before anything is allocated.
func (d *decoder) attributes(version byte, depth int) ([]Attribute, error) {
	n, err := d.count("attribute count", 5)
	if err != nil {
		return nil, err
	}
	out := make([]Attribute, n)
	for i := range out {
		if out[i], err = d.attribute(version, depth); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// attributeBuffer reads an 'fA': a u32 count, then per attribute its type and buffer length (0 = NULL). From
// p11-kit 0.25.4 on, a template-typed entry with a buffer nests its own 'fA' entries; nested says whether
// this request was written that way. The nested entries are checked and dropped: the front end does not
// serve template-valued attributes.
func (d *decoder) attributeBuffer(nested bool, depth int) ([]AttributeRequest, error) {
	n, err := d.count("attribute buffer count", 8)
	if err != nil {
		return nil, err
	}
	out := make([]AttributeRequest, n)
	for i := range out {
		t, err := d.u32("attribute type")
		if err != nil {
			return nil, err
		}
		l, err := d.u32("attribute buffer length")
		if err != nil {
			return nil, err
		}
		out[i] = AttributeRequest{Type: uint64(t), Len: uint64(l), Null: l == 0}
		if nested && l != 0 && isTemplateType(uint64(t)) {
			if depth >= maxDepth {
				return nil, d.fail("attribute %#x: templates nested deeper than %d", t, maxDepth)
			}
			if _, err := d.attributeBuffer(nested, depth+1); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// appendAttribute encodes one 'A' as p11-kit's server does (p11_rpc_buffer_add_attribute).
func appendAttribute(b []byte, a Attribute, version byte) ([]byte, error) {
	if a.Type > 0xffffffff {
		return nil, fmt.Errorf("attribute type %#x does not fit the wire", a.Type)
	}
	b = appendU32(b, uint32(a.Type))
	if !a.Valid {
		return append(b, 0), nil
	}
	b = append(b, 1)
	n := a.Len
	if n == 0 {
		n = a.CLen()
	}
	if n > maxArrayLen-1 {
		return nil, fmt.Errorf("attribute %#x: length %d does not fit the wire", a.Type, n)
	}
	b = appendU32(b, uint32(n))
	sizeOnly := a.Value == nil && a.Template == nil
	kind := kindOf(a.Type, version)
	if a.Template != nil && kind != KindTemplate {
		return nil, fmt.Errorf("attribute %#x: a template value for a %s attribute", a.Type, kind)
	}
	switch kind {
	case KindBool:
		if sizeOnly {
			return append(b, 0), nil
		}
		if len(a.Value) != 1 {
			return nil, fmt.Errorf("attribute %#x: bool value of %d bytes", a.Type, len(a.Value))
		}
		return append(b, a.Value[0]), nil
	case KindUlong:
		if sizeOnly {
			return appendU64(b, 0), nil
		}
		if len(a.Value) != 8 {
			return nil, fmt.Errorf("attribute %#x: ulong value of %d bytes", a.Type, len(a.Value))
		}
		return append(b, a.Value...), nil
	case KindDate:
		if len(a.Value) != 0 && len(a.Value) != 8 {
			return nil, fmt.Errorf("attribute %#x: date value of %d bytes", a.Type, len(a.Value))
		}
		return appendBytes(b, a.Value), nil
	case KindMechanisms:
		if len(a.Value)%8 != 0 {
			return nil, fmt.Errorf("attribute %#x: mechanism list of %d bytes", a.Type, len(a.Value))
		}
		b = appendU32(b, uint32(len(a.Value)/8))
		return append(b, a.Value...), nil
	case KindTemplate:
		if version == 0 && !sizeOnly {
			return nil, fmt.Errorf("attribute %#x: a version 0 client cannot decode a template value", a.Type)
		}
		b = appendU32(b, uint32(len(a.Template)))
		var err error
		for _, na := range a.Template {
			if b, err = appendAttribute(b, na, version); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	return appendBytes(b, a.Value), nil
}
