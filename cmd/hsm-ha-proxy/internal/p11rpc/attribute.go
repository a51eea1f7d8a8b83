package p11rpc

// Attribute is one CK_ATTRIBUTE of a template ('aA'), as sent by a client or as answered by the server.
//
// Value holds the value in a form independent of the client's byte order: use the helpers (AttrUlong,
// AttrBool, AttrBytes, Attribute.Ulong, Attribute.Bool) rather than reading it directly.
type Attribute struct {
	Type  uint64
	Valid bool // false: ulValueLen is CK_UNAVAILABLE_INFORMATION and nothing else travels
	// Len is the ulValueLen on the wire. Decoded: what the client said. Encoding: 0 means "computed from the
	// value"; a valid attribute with a nil Value and nil Template announces Len alone (a size-query answer).
	Len      uint64
	Value    []byte
	Template []Attribute // CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE
}

// AttributeRequest is one entry of an 'fA' buffer: the attribute asked for and the caller's buffer size.
type AttributeRequest struct {
	Type uint64
	Len  uint64 // the caller's buffer size; 0 when Null
	Null bool   // the caller passed pValue = NULL: it asks for the length only
}

// AttrUlong is a CK_ULONG attribute (CKA_CLASS, CKA_KEY_TYPE, ...).
func AttrUlong(t uint64, v uint64) Attribute { return Attribute{} }

// AttrBool is a CK_BBOOL attribute (CKA_SIGN, CKA_TOKEN, ...).
func AttrBool(t uint64, v bool) Attribute { return Attribute{} }

// AttrBytes is a byte-array attribute (CKA_LABEL, CKA_ID, CKA_MODULUS, CKA_EC_POINT, ...).
func AttrBytes(t uint64, v []byte) Attribute { return Attribute{} }

// AttrInvalid answers an attribute with ulValueLen = CK_UNAVAILABLE_INFORMATION (type invalid, sensitive,
// or buffer too small).
func AttrInvalid(t uint64) Attribute { return Attribute{} }

// AttrSize answers a size query: the value's length n (as CLen reports it) without the value.
func AttrSize(t uint64, n uint64) Attribute { return Attribute{} }

// Ulong is the value of a CK_ULONG attribute.
func (a Attribute) Ulong() (uint64, error) { return 0, errNotImplemented }

// Bool is the value of a CK_BBOOL attribute.
func (a Attribute) Bool() (bool, error) { return false, errNotImplemented }

// CLen is the ulValueLen a 64-bit C caller needs for this attribute's value: the number to compare with an
// AttributeRequest's Len and to answer a size query with.
func (a Attribute) CLen() uint64 { return 0 }
