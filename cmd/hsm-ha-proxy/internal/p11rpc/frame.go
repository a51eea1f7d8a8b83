package p11rpc

import (
	"encoding/binary"
	"fmt"
	"io"
)

// MaxVersion is the highest protocol version this codec speaks: 2, p11-kit 0.25.6+ (C_InitToken2,
// C_DeriveKey2 and the version 2 mechanism encoding). Version 0 is p11-kit ≤ 0.24 (Debian 12), 1 is
// 0.25.0–0.25.5.
const MaxVersion byte = 2

// Negotiate answers the client's handshake byte: min(client, MaxVersion), as p11-kit's server does. The
// connection then speaks that version.
func Negotiate(client byte) byte {
	return min(client, MaxVersion)
}

// HeaderLen is the size of a frame header: three big-endian uint32s (code, options length, body length).
const HeaderLen = 12

// Frame is one message on the socket after the handshake byte. Code pairs a reply with its request: the client
// numbers its requests (never 0) and expects the reply under the same code. Options is what the client sends
// in front of the body (p11-kit-client puts its module name, "client", there); a server ignores it and echoes
// nothing back (a reply's Options is empty).
type Frame struct {
	Code    uint32
	Options []byte
	Body    []byte
}

// ReadFrame reads one frame. maxLen caps options length + body length: a header announcing more is rejected
// before anything is allocated, so a hostile length costs nothing. A clean EOF before the first header byte
// returns io.EOF; a frame cut short returns io.ErrUnexpectedEOF; a bad header returns a *ProtocolError.
func ReadFrame(r io.Reader, maxLen uint32) (Frame, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	code := binary.BigEndian.Uint32(h[0:4])
	olen := binary.BigEndian.Uint32(h[4:8])
	blen := binary.BigEndian.Uint32(h[8:12])
	if code == 0 {
		// p11-kit's client treats code 0 as "wrong protocol" too.
		return Frame{}, &ProtocolError{Offset: 0, Msg: "frame code 0"}
	}
	if uint64(olen)+uint64(blen) > uint64(maxLen) {
		return Frame{}, &ProtocolError{Offset: 4, Msg: fmt.Sprintf("frame of %d+%d bytes over the limit of %d", olen, blen, maxLen)}
	}
	buf := make([]byte, int(olen)+int(blen))
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Code: code, Options: buf[:olen:olen], Body: buf[olen:]}, nil
}

// WriteFrame writes f as one Write call (header, options, body), so concurrent writers that serialise their
// calls never interleave a frame.
func WriteFrame(w io.Writer, f Frame) error {
	if uint64(len(f.Options)) > 0xffffffff || uint64(len(f.Body)) > 0xffffffff {
		return fmt.Errorf("p11rpc: frame too large (%d+%d bytes)", len(f.Options), len(f.Body))
	}
	buf := make([]byte, HeaderLen, HeaderLen+len(f.Options)+len(f.Body))
	binary.BigEndian.PutUint32(buf[0:4], f.Code)
	binary.BigEndian.PutUint32(buf[4:8], uint32(len(f.Options)))
	binary.BigEndian.PutUint32(buf[8:12], uint32(len(f.Body)))
	buf = append(buf, f.Options...)
	buf = append(buf, f.Body...)
	_, err := w.Write(buf)
	return err
}
