package p11rpc

import (
	"fmt"
	"strings"
)

// Request is a decoded request body. ParseRequest decodes and checks all of it against the call's signature;
// the readers then hand out the arguments in signature order. Like Reply, a Request keeps its first error:
// a read of the wrong element (or past the last) records a *ProtocolError, returns the zero value, and
// makes every later read do the same; Finish returns it. So a handler reads like p11-kit's rpc-server.c,
// IN block then PROCESS then OUT: read every argument, check Finish once, do the work, write the reply.
// The slices returned alias the body.
type Request struct {
	Call    CallID
	Version byte // the negotiated protocol version the request was parsed with
	// MechanismV2 tells which encoding the request's 'M' (if any) was read in; see the package documentation.
	MechanismV2 bool
	args        []arg
	next        int
	err         error // the first failed read
}

// arg is one decoded argument; elem says which fields hold it.
type arg struct {
	elem  string
	off   int // where it started in the body, for errors
	u     uint64
	null  bool
	bytes []byte
	attrs []Attribute
	areqs []AttributeRequest
	mech  *Mechanism
}

// dialect is what a request's encoding can differ in between client versions with no version byte to tell:
// the mechanism encoding (0.25.6+) and nested 'fA' entries (0.25.4+).
type dialect struct {
	mechV2   bool
	nestedFA bool
}

// requestElems is each call's request signature, split into elements.
var requestElems = func() (out [callMax][]string) {
	for i, c := range calls {
		out[i] = splitSig(c.Request)
	}
	return out
}()

// maxAllocFactor bounds what ParseRequest allocates, in bytes per body byte: the densest element (an
// invalid attribute, 5 bytes on the wire) becomes an Attribute of 80 bytes, and a request is read at most
// twice (see dialects).
const maxAllocFactor = 2 * 80 / 5

// ParseRequest decodes body: the uint32 call id, the signature (a byte array that must equal the call's
// request signature in the table), then every argument, which must end exactly at the end of the body.
// version is the negotiated protocol version. Errors are *ProtocolError; when the call id was read, the
// error's Call says which call it was. Counts are checked against the bytes left before anything is
// allocated, so what a body costs is proportional to its size (at most maxAllocFactor bytes per byte),
// never to the counts it announces.
func ParseRequest(body []byte, version byte) (*Request, error) {
	d := &decoder{b: body}
	id, err := d.u32("call id")
	if err != nil {
		return nil, err
	}
	call := CallID(id)
	if call == CallError || call >= callMax {
		d.off = 0
		return nil, d.fail("unknown call id %d", id)
	}
	d.call = call
	sig, err := d.bytes("signature")
	if err != nil {
		return nil, err
	}
	if sig == nil || string(sig) != calls[call].Request {
		d.off = 4
		return nil, d.fail("signature %q, want %q", sig, calls[call].Request)
	}
	start := d.off
	var firstErr error
	for _, dl := range dialects(call, version) {
		d.off = start
		args, err := decodeArgs(d, requestElems[call], version, dl)
		if err == nil {
			return &Request{Call: call, Version: version, MechanismV2: dl.mechV2, args: args}, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// dialects lists the encodings to try for call, the one the negotiated version implies first. Only a
// request with an 'M' or an 'fA' has an alternative: when the preferred reading does not consume the body
// exactly, the other is tried, and the first that does wins (see the package documentation).
func dialects(call CallID, version byte) []dialect {
	sig := calls[call].Request
	hasM := strings.Contains(sig, "M")
	hasFA := strings.Contains(sig, "fA")
	pref := dialect{mechV2: version >= 2, nestedFA: version >= 2}
	switch {
	case hasM:
		return []dialect{pref, {mechV2: !pref.mechV2, nestedFA: pref.nestedFA}}
	case hasFA && version == 1:
		// 0.25.0–0.25.3 and 0.25.4–0.25.5 both say version 1; the later ones nest.
		return []dialect{{nestedFA: true}, {nestedFA: false}}
	case hasFA:
		return []dialect{pref, {nestedFA: !pref.nestedFA}}
	}
	return []dialect{pref}
}

func decodeArgs(d *decoder, elems []string, version byte, dl dialect) ([]arg, error) {
	args := make([]arg, len(elems))
	for i, e := range elems {
		a := arg{elem: e, off: d.off}
		var err error
		switch e {
		case "u":
			a.u, err = d.u64("ulong")
		case "y":
			var b byte
			b, err = d.byte1("byte")
			a.u = uint64(b)
		case "ay":
			a.bytes, err = d.byteArrayArg()
		case "fy":
			var n uint32
			n, err = d.u32("byte buffer size")
			switch n {
			case 0:
				a.null = true
			case nullLen:
				// 0.25+: a non-NULL buffer of 0 bytes.
			default:
				a.u = uint64(n)
			}
		case "fu":
			var n uint32
			n, err = d.u32("ulong buffer size")
			a.u, a.null = uint64(n), n == 0
		case "fA":
			a.areqs, err = d.attributeBuffer(dl.nestedFA, 0)
		case "aA":
			a.attrs, err = d.attributes(version, 0)
		case "M":
			a.mech, err = d.mechanism(dl.mechV2)
		case "z", "s":
			a.bytes, err = d.bytes("string")
		default:
			err = d.fail("signature element %q cannot be decoded in a request", e)
		}
		if err != nil {
			return nil, err
		}
		args[i] = a
	}
	if d.remaining() != 0 {
		return nil, d.fail("%d bytes after the last argument", d.remaining())
	}
	return args, nil
}

// byteArrayArg reads a request 'ay': a presence byte, then for an absent array its length alone (p11-kit
// sends one; we ignore it) and for a present one a byte array (NULL = 0xffffffff reads as nil too, which
// p11-kit 0.25+ sends for a NULL pointer of length 0).
func (d *decoder) byteArrayArg() ([]byte, error) {
	present, err := d.byte1("array presence byte")
	if err != nil {
		return nil, err
	}
	switch present {
	case 0:
		_, err := d.u32("absent array length")
		return nil, err
	case 1:
		return d.bytes("byte array")
	}
	d.off--
	return nil, d.fail("array presence byte %d", present)
}

// take returns the next argument if it is elem. Otherwise it records the error (the first one sticks;
// Finish returns it) and returns nil, and so do all later reads.
func (r *Request) take(elem string) *arg {
	if r.err != nil {
		return nil
	}
	if r.next >= len(r.args) {
		r.err = &ProtocolError{Call: r.Call, Msg: fmt.Sprintf("read %q: all %d arguments already read", elem, len(r.args))}
		return nil
	}
	a := &r.args[r.next]
	if a.elem != elem {
		r.err = &ProtocolError{Call: r.Call, Offset: a.off, Msg: fmt.Sprintf("read %q: argument %d is %q", elem, r.next, a.elem)}
		return nil
	}
	r.next++
	return a
}

// Next is the next signature element to read ("u", "y", "ay", "fy", "fu", "fA", "aA", "M", "z", "s"), or ""
// when all are read (or a read failed).
func (r *Request) Next() string {
	if r.err != nil || r.next >= len(r.args) {
		return ""
	}
	return r.args[r.next].elem
}

// Ulong reads a 'u': a CK_ULONG (8 bytes on the wire whatever the client's word size).
func (r *Request) Ulong() uint64 {
	if a := r.take("u"); a != nil {
		return a.u
	}
	return 0
}

// Byte reads a 'y'.
func (r *Request) Byte() byte {
	if a := r.take("y"); a != nil {
		return byte(a.u)
	}
	return 0
}

// ByteArray reads an 'ay': nil for an absent (NULL) array, a non-nil (possibly empty) slice otherwise.
func (r *Request) ByteArray() []byte {
	if a := r.take("ay"); a != nil {
		return a.bytes
	}
	return nil
}

// ByteBuffer reads an 'fy': n is the size of the output buffer the caller passed; null is true when the
// caller passed NULL, a size query. On the wire 0 is NULL, and p11-kit 0.25+ sends 0xffffffff for a non-NULL
// buffer of 0 bytes (n = 0, null = false); p11-kit 0.24 sends 0 for both, so for it a 0-byte buffer reads as
// a size query (which is also how p11-kit's own server treats it).
func (r *Request) ByteBuffer() (n uint64, null bool) {
	if a := r.take("fy"); a != nil {
		return a.u, a.null
	}
	return 0, false
}

// UlongBuffer reads an 'fu': the number of CK_ULONGs the caller has room for; null (n = 0) when it passed NULL
// or room for none — all client versions send 0 for both.
func (r *Request) UlongBuffer() (n uint64, null bool) {
	if a := r.take("fu"); a != nil {
		return a.u, a.null
	}
	return 0, false
}

// AttributeBuffer reads an 'fA' (C_GetAttributeValue's template): for each attribute its type and the size
// of the caller's buffer, or Null.
func (r *Request) AttributeBuffer() []AttributeRequest {
	if a := r.take("fA"); a != nil {
		return a.areqs
	}
	return nil
}

// Attributes reads an 'aA': a template with values (C_FindObjectsInit, C_CreateObject, ...).
func (r *Request) Attributes() []Attribute {
	if a := r.take("aA"); a != nil {
		return a.attrs
	}
	return nil
}

// Mechanism reads an 'M'. It returns nil when the client sent the NULL mechanism (p11-kit 0.25.3+: an Init
// call that cancels the operation).
func (r *Request) Mechanism() *Mechanism {
	if a := r.take("M"); a != nil {
		return a.mech
	}
	return nil
}

// CString reads a 'z' (C_InitToken's label), without the terminating NUL. (Not String: a Request is no
// fmt.Stringer, whose printing would consume an argument.)
func (r *Request) CString() string {
	if a := r.take("z"); a != nil {
		return string(a.bytes)
	}
	return ""
}

// SpaceString reads an 's' (C_InitToken2's label: 32 space-padded bytes), as sent.
func (r *Request) SpaceString() string {
	if a := r.take("s"); a != nil {
		return string(a.bytes)
	}
	return ""
}

// Finish ends the reading: the first read that failed, else an error unless every argument has been read
// (a server that forgets one has a bug). A handler reads all its arguments, then checks Finish once.
func (r *Request) Finish() error {
	if r.err != nil {
		return r.err
	}
	if r.next != len(r.args) {
		return &ProtocolError{Call: r.Call, Offset: r.args[r.next].off, Msg: fmt.Sprintf("%d of %d arguments not read", len(r.args)-r.next, len(r.args))}
	}
	return nil
}
