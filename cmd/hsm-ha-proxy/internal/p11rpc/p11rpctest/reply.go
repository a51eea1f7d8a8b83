package p11rpctest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// Value is one value of a reply, as the client reads it.
type Value struct {
	Elem       string // the signature element: "u", "v", "s", "ay", "au", "aA"
	Ulong      uint64 // u
	Version    [2]byte
	Bytes      []byte // s; ay when Present
	Present    bool   // ay, au: the data travelled; otherwise only Len did
	Len        uint64 // ay, au: the length or count
	Ulongs     []uint64
	Attributes []p11rpc.Attribute // aA, decoded as the client does
}

// ErrReply is a reply that is an error reply: the call returned RV.
type ErrReply struct{ RV uint64 }

func (e *ErrReply) Error() string { return fmt.Sprintf("p11rpctest: error reply CK_RV %#x", e.RV) }

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.err = errors.New("p11rpctest: reply cut short")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) array() []byte {
	n := r.u32()
	if r.err != nil || n == 0xffffffff {
		return nil
	}
	return r.take(int(n))
}

// DecodeReply reads a reply body for call. An error reply returns *ErrReply.
func DecodeReply(body []byte, call p11rpc.CallID) ([]Value, error) {
	r := &reader{b: body}
	id := p11rpc.CallID(r.u32())
	sig := string(r.array())
	if r.err != nil {
		return nil, r.err
	}
	if id == p11rpc.CallError && sig == "u" {
		rv := r.u64()
		if r.err != nil {
			return nil, r.err
		}
		return nil, &ErrReply{RV: rv}
	}
	spec, ok := p11rpc.Spec(id)
	if id != call || !ok || sig != spec.Response {
		return nil, fmt.Errorf("p11rpctest: reply %s %q to %s", id, sig, call)
	}
	var out []Value
	for _, e := range split(sig) {
		v := Value{Elem: e}
		switch e {
		case "u":
			v.Ulong = r.u64()
		case "v":
			copy(v.Version[:], r.take(2))
		case "s":
			v.Bytes = r.array()
		case "ay":
			p := r.take(1)
			v.Present = len(p) == 1 && p[0] != 0
			if v.Present {
				v.Bytes = r.array()
				v.Len = uint64(len(v.Bytes))
			} else {
				v.Len = uint64(r.u32())
			}
		case "au":
			p := r.take(1)
			v.Present = len(p) == 1 && p[0] != 0
			v.Len = uint64(r.u32())
			for i := uint64(0); v.Present && i < v.Len && r.err == nil; i++ {
				v.Ulongs = append(v.Ulongs, r.u64())
			}
		case "aA":
			v.Attributes = r.attrs(0)
		default:
			return nil, fmt.Errorf("p11rpctest: cannot decode reply element %q", e)
		}
		if r.err != nil {
			return nil, r.err
		}
		out = append(out, v)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("p11rpctest: %d bytes after the reply", len(r.b))
	}
	return out, nil
}

func (r *reader) attrs(depth int) []p11rpc.Attribute {
	n := r.u32()
	if r.err != nil || uint64(n)*5 > uint64(len(r.b)) || depth > 8 {
		r.err = errors.New("p11rpctest: bad attribute array")
		return nil
	}
	out := make([]p11rpc.Attribute, n)
	for i := range out {
		a := p11rpc.Attribute{Type: uint64(r.u32())}
		valid := r.take(1)
		if r.err != nil || valid[0] == 0 {
			out[i] = a
			continue
		}
		a.Valid = true
		a.Len = uint64(r.u32())
		switch p11rpc.KindOf(a.Type) {
		case p11rpc.KindBool:
			a.Value = r.take(1)
		case p11rpc.KindUlong:
			a.Value = r.take(8)
		case p11rpc.KindMechanisms:
			a.Value = r.take(8 * int(r.u32()))
		case p11rpc.KindTemplate:
			a.Template = r.attrs(depth + 1)
		default:
			a.Value = r.array()
		}
		out[i] = a
	}
	return out
}
