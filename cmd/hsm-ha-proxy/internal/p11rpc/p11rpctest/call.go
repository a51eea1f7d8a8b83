package p11rpctest

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// Call builds a request body: the values are given in the order of the call's request signature, each
// with the method of its element. A value out of order records an error that Body returns.
type Call struct {
	ID      p11rpc.CallID
	version byte
	buf     []byte
	elems   []string
	pos     int
	err     error
}

// NewCall starts a request to id written as a client of protocol version writes it. That is normally the
// connection's version; a p11-kit 0.25.6+ client on a version 0 connection (p11-kit issue #733) writes as
// version 2.
func NewCall(id p11rpc.CallID, version byte) *Call {
	c := &Call{ID: id, version: version}
	spec, ok := p11rpc.Spec(id)
	if !ok {
		c.err = fmt.Errorf("p11rpctest: unknown call id %d", uint32(id))
		return c
	}
	c.elems = split(spec.Request)
	c.buf = u32(nil, uint32(id))
	c.buf = array(c.buf, []byte(spec.Request))
	return c
}

func split(sig string) []string {
	var out []string
	for i := 0; i < len(sig); i++ {
		if strings.IndexByte("af", sig[i]) >= 0 && i+1 < len(sig) {
			out = append(out, sig[i:i+2])
			i++
		} else {
			out = append(out, sig[i:i+1])
		}
	}
	return out
}

func u32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func u64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// array is a byte array: length and bytes, nil as 0xffffffff.
func array(b, v []byte) []byte {
	if v == nil {
		return u32(b, 0xffffffff)
	}
	return append(u32(b, uint32(len(v))), v...)
}

func (c *Call) put(elem string) bool {
	switch {
	case c.err != nil:
		return false
	case c.pos >= len(c.elems):
		c.err = fmt.Errorf("p11rpctest: %s: %q after the last argument", c.ID, elem)
		return false
	case c.elems[c.pos] != elem:
		c.err = fmt.Errorf("p11rpctest: %s: %q where %q is due", c.ID, elem, c.elems[c.pos])
		return false
	}
	c.pos++
	return true
}

// Ulong adds a 'u'.
func (c *Call) Ulong(v uint64) *Call {
	if c.put("u") {
		c.buf = u64(c.buf, v)
	}
	return c
}

// Byte adds a 'y'.
func (c *Call) Byte(v byte) *Call {
	if c.put("y") {
		c.buf = append(c.buf, v)
	}
	return c
}

// ByteArray adds an 'ay'. nil is a NULL pointer, written absent (presence byte 0 and length 0) as p11-kit
// 0.24 writes it.
func (c *Call) ByteArray(v []byte) *Call {
	if !c.put("ay") {
		return c
	}
	if v == nil {
		c.buf = u32(append(c.buf, 0), 0)
		return c
	}
	c.buf = array(append(c.buf, 1), v)
	return c
}

// ByteBuffer adds an 'fy': a NULL buffer (size query) when null, else a buffer of n bytes (a 0-byte one as
// 0xffffffff on version 1+, as p11-kit 0.25+ writes it).
func (c *Call) ByteBuffer(n uint64, null bool) *Call {
	if !c.put("fy") {
		return c
	}
	switch {
	case null:
		c.buf = u32(c.buf, 0)
	case n == 0 && c.version >= 1:
		c.buf = u32(c.buf, 0xffffffff)
	default:
		c.buf = u32(c.buf, uint32(n))
	}
	return c
}

// UlongBuffer adds an 'fu': room for n CK_ULONGs, 0 for a NULL buffer.
func (c *Call) UlongBuffer(n uint64) *Call {
	if c.put("fu") {
		c.buf = u32(c.buf, uint32(n))
	}
	return c
}

// AttributeBuffer adds an 'fA' (no nested template buffers).
func (c *Call) AttributeBuffer(reqs []p11rpc.AttributeRequest) *Call {
	if !c.put("fA") {
		return c
	}
	c.buf = u32(c.buf, uint32(len(reqs)))
	for _, r := range reqs {
		c.buf = u32(c.buf, uint32(r.Type))
		if r.Null {
			c.buf = u32(c.buf, 0)
		} else {
			c.buf = u32(c.buf, uint32(r.Len))
		}
	}
	return c
}

// Attributes adds an 'aA', with value kinds as p11-kit 0.25+ maps them (p11rpc.KindOf).
func (c *Call) Attributes(attrs []p11rpc.Attribute) *Call {
	if !c.put("aA") {
		return c
	}
	c.buf = appendAttrs(c.buf, attrs)
	return c
}

func appendAttrs(b []byte, attrs []p11rpc.Attribute) []byte {
	b = u32(b, uint32(len(attrs)))
	for _, a := range attrs {
		b = u32(b, uint32(a.Type))
		if !a.Valid {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		n := a.Len
		if n == 0 {
			n = a.CLen()
		}
		b = u32(b, uint32(n))
		switch p11rpc.KindOf(a.Type) {
		case p11rpc.KindBool, p11rpc.KindUlong:
			b = append(b, a.Value...) // 1 byte, or 8 bytes big-endian
		case p11rpc.KindMechanisms:
			b = append(u32(b, uint32(len(a.Value)/8)), a.Value...)
		case p11rpc.KindTemplate:
			b = appendAttrs(b, a.Template)
		default:
			b = array(b, a.Value)
		}
	}
	return b
}

// Mechanism adds an 'M' (nil: the NULL mechanism) in the encoding of the connection's version: from version
// 2 a parameterless mechanism is its type alone and others carry a has-parameter byte. PSS and OAEP are
// encoded from their fields, AES-GCM's Param is its encoded fields (GCMParam); any other parameter is Param
// as a byte array.
func (c *Call) Mechanism(m *p11rpc.Mechanism) *Call {
	if !c.put("M") {
		return c
	}
	if m == nil {
		c.buf = u32(c.buf, 0xffffffff)
		return c
	}
	c.buf = u32(c.buf, uint32(m.Type))
	none := m.Param == nil && m.PSS == nil && m.OAEP == nil
	if c.version >= 2 {
		if p11rpc.Parameterless(m.Type) {
			return c
		}
		if none {
			c.buf = append(c.buf, 0)
			return c
		}
		c.buf = append(c.buf, 1)
	}
	switch {
	case m.PSS != nil:
		c.buf = u64(u64(u64(c.buf, m.PSS.Hash), m.PSS.MGF), m.PSS.SaltLen)
	case m.OAEP != nil:
		c.buf = array(u64(u64(u64(c.buf, m.OAEP.Hash), m.OAEP.MGF), m.OAEP.Source), m.OAEP.Label)
	case m.Type == p11rpc.CKMAESGCM:
		c.buf = append(c.buf, m.Param...) // GCMParam's fields, as p11-kit writes CK_GCM_PARAMS
	default:
		c.buf = array(c.buf, m.Param)
	}
	return c
}

// GCMParam is the Param of a CKM_AES_GCM Mechanism: CK_GCM_PARAMS' fields as p11-kit 0.25+ writes them
// (pIv, ulIvBits, pAAD, ulTagBits), which Call.Mechanism sends as they are.
func GCMParam(iv []byte, ivBits uint64, aad []byte, tagBits uint64) []byte {
	return u64(array(u64(array(nil, iv), ivBits), aad), tagBits)
}

// String adds a 'z'.
func (c *Call) String(s string) *Call {
	if c.put("z") {
		c.buf = array(c.buf, []byte(s))
	}
	return c
}

// SpaceString adds an 's', padded to 32 bytes (C_InitToken2's label).
func (c *Call) SpaceString(s string) *Call {
	if c.put("s") {
		c.buf = array(c.buf, []byte(p11rpc.PadString(s, 32)))
	}
	return c
}

// Body is the encoded request; an error unless every argument was given, in order.
func (c *Call) Body() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.pos != len(c.elems) {
		return nil, fmt.Errorf("p11rpctest: %s: %d of %d arguments given", c.ID, c.pos, len(c.elems))
	}
	return c.buf, nil
}
