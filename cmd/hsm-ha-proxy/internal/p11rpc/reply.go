package p11rpc

import (
	"fmt"
	"unicode/utf8"
)

// Reply encodes a reply body: the call id, the call's response signature, then the values written in
// signature order. A write of the wrong element, or past the end, records an error that Body returns; later
// writes are then ignored.
type Reply struct {
	call    CallID
	version byte
	buf     []byte
	elems   []string
	pos     int
	nstr    int // space strings written so far, to know each one's width
	err     error
}

// responseElems is each call's response signature, split into elements.
var responseElems = func() (out [callMax][]string) {
	for i, c := range calls {
		out[i] = splitSig(c.Response)
	}
	return out
}()

// spaceWidths is the width of each 's' in a response, in order: the fixed-size fields of CK_INFO,
// CK_SLOT_INFO and CK_TOKEN_INFO (the client refuses any other length).
var spaceWidths = map[CallID][]int{
	CallGetInfo:      {32, 32},             // manufacturerID, libraryDescription
	CallGetSlotInfo:  {64, 32},             // slotDescription, manufacturerID
	CallGetTokenInfo: {32, 32, 16, 16, 16}, // label, manufacturerID, model, serialNumber, utcTime
}

// NewReply starts the reply to call for a connection speaking version. An unknown call gives a Reply whose
// Body fails.
func NewReply(call CallID, version byte) *Reply {
	w := &Reply{call: call, version: version}
	spec, ok := Spec(call)
	if !ok {
		w.err = fmt.Errorf("p11rpc: reply to unknown call id %d", uint32(call))
		return w
	}
	w.elems = responseElems[call]
	w.buf = appendU32(make([]byte, 0, 64), uint32(call))
	w.buf = appendBytes(w.buf, []byte(spec.Response))
	return w
}

// put checks that elem is the next element of the signature.
func (w *Reply) put(elem string) bool {
	if w.err != nil {
		return false
	}
	if w.pos >= len(w.elems) {
		w.err = fmt.Errorf("p11rpc: %s reply: %q written after the last element", w.call, elem)
		return false
	}
	if w.elems[w.pos] != elem {
		w.err = fmt.Errorf("p11rpc: %s reply: %q written where %q is due", w.call, elem, w.elems[w.pos])
		return false
	}
	w.pos++
	return true
}

// Ulong writes a 'u' (8 bytes).
func (w *Reply) Ulong(v uint64) {
	if w.put("u") {
		w.buf = appendU64(w.buf, v)
	}
}

// Byte writes a 'y'.
func (w *Reply) Byte(b byte) {
	if w.put("y") {
		w.buf = append(w.buf, b)
	}
}

// ByteArray writes an 'ay' carrying b (a nil b is sent as an empty array).
func (w *Reply) ByteArray(b []byte) {
	if !w.put("ay") {
		return
	}
	if uint64(len(b)) >= maxArrayLen {
		w.err = fmt.Errorf("p11rpc: %s reply: byte array of %d bytes", w.call, len(b))
		return
	}
	w.buf = append(w.buf, 1)
	w.buf = appendU32(w.buf, uint32(len(b)))
	w.buf = append(w.buf, b...)
}

// ByteArrayLen writes an 'ay' carrying only the length n. The client returns CKR_OK with n to a caller that
// passed a NULL buffer (size query) and CKR_BUFFER_TOO_SMALL with n to one that passed a buffer.
func (w *Reply) ByteArrayLen(n uint64) {
	if !w.put("ay") {
		return
	}
	if n > 0xffffffff {
		w.err = fmt.Errorf("p11rpc: %s reply: length %d does not fit the wire", w.call, n)
		return
	}
	w.buf = append(w.buf, 0)
	w.buf = appendU32(w.buf, uint32(n))
}

// UlongArray writes an 'au' carrying v.
func (w *Reply) UlongArray(v []uint64) {
	if !w.put("au") {
		return
	}
	w.buf = append(w.buf, 1)
	w.buf = appendU32(w.buf, uint32(len(v)))
	for _, x := range v {
		w.buf = appendU64(w.buf, x)
	}
}

// UlongArrayLen writes an 'au' carrying only the count n (as ByteArrayLen: CKR_OK to a size query,
// CKR_BUFFER_TOO_SMALL to a caller with a buffer).
func (w *Reply) UlongArrayLen(n uint64) {
	if !w.put("au") {
		return
	}
	if n > 0xffffffff {
		w.err = fmt.Errorf("p11rpc: %s reply: count %d does not fit the wire", w.call, n)
		return
	}
	w.buf = append(w.buf, 0)
	w.buf = appendU32(w.buf, uint32(n))
}

// Attributes writes an 'aA': C_GetAttributeValue's answer, one Attribute per AttributeRequest in the same
// order (the client checks count and types). Its CK_RV follows as a Ulong.
func (w *Reply) Attributes(a []Attribute) {
	if !w.put("aA") {
		return
	}
	w.buf = appendU32(w.buf, uint32(len(a)))
	for _, at := range a {
		b, err := appendAttribute(w.buf, at, w.version)
		if err != nil {
			w.err = fmt.Errorf("p11rpc: %s reply: %w", w.call, err)
			return
		}
		w.buf = b
	}
}

// String writes an 's': the CK_INFO / CK_SLOT_INFO / CK_TOKEN_INFO field due at this position, padded with
// spaces to its width (32, 64 or 16 bytes) or, when longer, cut at the last whole UTF-8 character that fits
// and then padded.
func (w *Reply) String(s string) {
	if !w.put("s") {
		return
	}
	widths := spaceWidths[w.call]
	if w.nstr >= len(widths) {
		w.err = fmt.Errorf("p11rpc: %s reply: no width known for string %d", w.call, w.nstr)
		return
	}
	w.buf = appendBytes(w.buf, []byte(PadString(s, widths[w.nstr])))
	w.nstr++
}

// PadString is s space-padded to width bytes, or cut at the last whole UTF-8 character that fits, then padded.
func PadString(s string, width int) string {
	if len(s) > width {
		cut := width
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	b := make([]byte, width)
	copy(b, s)
	for i := len(s); i < width; i++ {
		b[i] = ' '
	}
	return string(b)
}

// Version writes a 'v' (CK_VERSION: major, minor).
func (w *Reply) Version(major, minor byte) {
	if w.put("v") {
		w.buf = append(w.buf, major, minor)
	}
}

// Body returns the encoded reply; an error unless the whole response signature was written, in order.
func (w *Reply) Body() ([]byte, error) {
	if w.err != nil {
		return nil, w.err
	}
	if w.pos != len(w.elems) {
		return nil, fmt.Errorf("p11rpc: %s reply: %d of %d elements written", w.call, w.pos, len(w.elems))
	}
	return w.buf, nil
}

// ErrorReply is the body of an error reply: call id 0, signature "u", the CK_RV. The client returns rv
// from the call it made.
func ErrorReply(rv uint64) []byte {
	b := appendU32(make([]byte, 0, 17), uint32(CallError))
	b = appendBytes(b, []byte("u"))
	return appendU64(b, rv)
}
