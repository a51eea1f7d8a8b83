package p11rpc

// Reply encodes a reply body: the call id, the call's response signature, then the values written in
// signature order. A writer out of order records an error that Body returns.
type Reply struct {
	call    CallID
	version byte
	buf     []byte
	sig     string
	pos     int
	err     error
}

// NewReply starts the reply to call for a connection speaking version.
func NewReply(call CallID, version byte) *Reply { return &Reply{call: call, version: version} }

// Ulong writes a 'u'.
func (w *Reply) Ulong(v uint64) {}

// Byte writes a 'y'.
func (w *Reply) Byte(b byte) {}

// ByteArray writes an 'ay' carrying b.
func (w *Reply) ByteArray(b []byte) {}

// ByteArrayLen writes an 'ay' carrying only a length: the answer to a size query (NULL buffer), or with a
// too-small buffer the client's CKR_BUFFER_TOO_SMALL.
func (w *Reply) ByteArrayLen(n uint64) {}

// UlongArray writes an 'au' carrying v.
func (w *Reply) UlongArray(v []uint64) {}

// UlongArrayLen writes an 'au' carrying only a length (as ByteArrayLen).
func (w *Reply) UlongArrayLen(n uint64) {}

// Attributes writes an 'aA' (C_GetAttributeValue's answer; its CK_RV follows as a Ulong).
func (w *Reply) Attributes(a []Attribute) {}

// String writes an 's': s space-padded (or cut at a UTF-8 boundary) to the width of the CK_INFO /
// CK_SLOT_INFO / CK_TOKEN_INFO field at this position.
func (w *Reply) String(s string) {}

// Version writes a 'v' (CK_VERSION).
func (w *Reply) Version(major, minor byte) {}

// Body returns the encoded reply; an error unless the whole response signature was written, in order.
func (w *Reply) Body() ([]byte, error) { return nil, errNotImplemented }

// ErrorReply is the body of an error reply: call id 0, signature "u", the CK_RV.
func ErrorReply(rv uint64) []byte { return nil }
