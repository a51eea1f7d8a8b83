package p11rpc

import (
	"fmt"
)

// walkRequest reads every argument of r with the reader its signature calls for, then Finish: what a
// server does, driven by the signature alone.
func walkRequest(r *Request) error {
	for e := r.Next(); e != ""; e = r.Next() {
		switch e {
		case "u":
			r.Ulong()
		case "y":
			r.Byte()
		case "ay":
			r.ByteArray()
		case "fy":
			r.ByteBuffer()
		case "fu":
			r.UlongBuffer()
		case "fA":
			r.AttributeBuffer()
		case "aA":
			r.Attributes()
		case "M":
			r.Mechanism()
		case "z":
			r.CString()
		case "s":
			r.SpaceString()
		default:
			return fmt.Errorf("no reader for %q", e)
		}
	}
	return r.Finish()
}

// replyVal is one decoded reply value, as a client would see it.
type replyVal struct {
	elem    string
	u       uint64
	b       []byte // y (1 byte), v (2 bytes), s, ay
	present bool   // ay, au: data present (else only the length n)
	n       uint64
	ulongs  []uint64
	attrs   []Attribute
}

// decodeReply is the client side of a reply: the call id, the signature (checked against the table), then
// the values. It exists for tests: the front end never decodes replies.
func decodeReply(body []byte, version byte) (CallID, []replyVal, error) {
	d := &decoder{b: body}
	id, err := d.u32("call id")
	if err != nil {
		return 0, nil, err
	}
	call := CallID(id)
	spec, ok := Spec(call)
	if !ok {
		return 0, nil, d.fail("unknown call id %d", id)
	}
	d.call = call
	sig, err := d.bytes("signature")
	if err != nil {
		return 0, nil, err
	}
	if string(sig) != spec.Response {
		return 0, nil, d.fail("signature %q, want %q", sig, spec.Response)
	}
	var vals []replyVal
	for _, e := range splitSig(spec.Response) {
		v := replyVal{elem: e}
		switch e {
		case "u":
			v.u, err = d.u64("ulong")
		case "y":
			var b byte
			b, err = d.byte1("byte")
			v.b = []byte{b}
		case "v":
			if err = d.need(2, "version"); err == nil {
				v.b = d.b[d.off : d.off+2]
				d.off += 2
			}
		case "s":
			v.b, err = d.bytes("string")
		case "ay", "au":
			var p byte
			if p, err = d.byte1("presence"); err != nil {
				break
			}
			v.present = p != 0
			if e == "ay" && v.present {
				v.b, err = d.bytes("byte array")
				break
			}
			var n uint32
			if n, err = d.u32("length"); err != nil {
				break
			}
			v.n = uint64(n)
			if e == "au" && v.present {
				for i := uint32(0); i < n && err == nil; i++ {
					var x uint64
					x, err = d.u64("ulong")
					v.ulongs = append(v.ulongs, x)
				}
			}
		case "aA":
			v.attrs, err = d.attributes(version, 0)
		default:
			err = d.fail("no decoder for reply element %q", e)
		}
		if err != nil {
			return 0, nil, err
		}
		vals = append(vals, v)
	}
	if d.remaining() != 0 {
		return 0, nil, d.fail("%d bytes left", d.remaining())
	}
	return call, vals, nil
}

// encodeReply writes vals back with Reply, the way the front end does.
func encodeReply(call CallID, version byte, vals []replyVal) ([]byte, error) {
	if call == CallError {
		return ErrorReply(vals[0].u), nil
	}
	w := NewReply(call, version)
	for _, v := range vals {
		switch v.elem {
		case "u":
			w.Ulong(v.u)
		case "y":
			w.Byte(v.b[0])
		case "v":
			w.Version(v.b[0], v.b[1])
		case "s":
			w.String(string(v.b))
		case "ay":
			if v.present {
				w.ByteArray(v.b)
			} else {
				w.ByteArrayLen(v.n)
			}
		case "au":
			if v.present {
				w.UlongArray(v.ulongs)
			} else {
				w.UlongArrayLen(v.n)
			}
		case "aA":
			w.Attributes(v.attrs)
		}
	}
	return w.Body()
}
