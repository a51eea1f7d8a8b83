package p11rpc

import (
	"encoding/binary"
	"fmt"
)

// The primitive encodings of rpc-message.c: integers are big-endian; a CK_ULONG is always 8 bytes, attribute
// and mechanism types 4; a byte array is a uint32 length and the bytes, with 0xffffffff meaning NULL.
const (
	nullLen     = 0xffffffff
	maxArrayLen = 0x7fffffff // p11-kit refuses lengths from here up (except nullLen)
)

// decoder reads primitives from a body, turning every shortfall into a *ProtocolError that names the offset.
type decoder struct {
	b    []byte
	off  int
	call CallID
}

func (d *decoder) fail(format string, args ...any) error {
	return &ProtocolError{Call: d.call, Offset: d.off, Msg: fmt.Sprintf(format, args...)}
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) need(n int, what string) error {
	if n < 0 || d.remaining() < n {
		return d.fail("%s: need %d bytes, %d left", what, n, d.remaining())
	}
	return nil
}

func (d *decoder) byte1(what string) (byte, error) {
	if err := d.need(1, what); err != nil {
		return 0, err
	}
	v := d.b[d.off]
	d.off++
	return v, nil
}

func (d *decoder) u32(what string) (uint32, error) {
	if err := d.need(4, what); err != nil {
		return 0, err
	}
	v := binary.BigEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v, nil
}

func (d *decoder) u64(what string) (uint64, error) {
	if err := d.need(8, what); err != nil {
		return 0, err
	}
	v := binary.BigEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v, nil
}

// bytes reads a length-prefixed byte array. NULL (length 0xffffffff) is nil; an empty array is a non-nil
// empty slice. The slice aliases the body.
func (d *decoder) bytes(what string) ([]byte, error) {
	n, err := d.u32(what)
	if err != nil {
		return nil, err
	}
	if n == nullLen {
		return nil, nil
	}
	if n >= maxArrayLen {
		d.off -= 4
		return nil, d.fail("%s: length %#x out of range", what, n)
	}
	if err := d.need(int(n), what); err != nil {
		return nil, err
	}
	v := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return v, nil
}

// count reads an element count and checks that count elements of at least minSize bytes each can still
// follow, so that a hostile count never makes us allocate.
func (d *decoder) count(what string, minSize int) (int, error) {
	n, err := d.u32(what)
	if err != nil {
		return 0, err
	}
	if uint64(n)*uint64(minSize) > uint64(d.remaining()) {
		d.off -= 4
		return 0, d.fail("%s: %d elements cannot fit in %d bytes", what, n, d.remaining())
	}
	return int(n), nil
}

func appendU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func appendU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// appendBytes appends a byte array; nil is NULL (0xffffffff), not an empty array.
func appendBytes(b []byte, v []byte) []byte {
	if v == nil {
		return appendU32(b, nullLen)
	}
	b = appendU32(b, uint32(len(v)))
	return append(b, v...)
}

// splitSig cuts a signature into its elements: "uayfy" -> ["u", "ay", "fy"].
func splitSig(sig string) []string {
	var out []string
	for i := 0; i < len(sig); i++ {
		if (sig[i] == 'a' || sig[i] == 'f') && i+1 < len(sig) {
			out = append(out, sig[i:i+2])
			i++
			continue
		}
		out = append(out, sig[i:i+1])
	}
	return out
}
