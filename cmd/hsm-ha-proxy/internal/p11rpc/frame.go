package p11rpc

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
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
// before anything is allocated, so a hostile length costs nothing, with a *FrameTooLargeError: only the
// header has been read then, and the caller may skip the rest (SkipFrame) and answer the frame's code. A
// clean EOF before the first header byte returns io.EOF; a frame cut short returns io.ErrUnexpectedEOF; a
// bad header returns a *ProtocolError.
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
		return Frame{}, &FrameTooLargeError{Code: code, OptionsLen: olen, BodyLen: blen, Max: maxLen}
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

// FrameTooLargeError is ReadFrame's answer to a header announcing more than its limit. The stream is left
// just after the header, so that the frame can be skipped and its request answered (the client pairs the
// answer with Code) instead of the connection being lost.
type FrameTooLargeError struct {
	Code                uint32
	OptionsLen, BodyLen uint32
	Max                 uint32 // the limit it is over
}

// Len is what the frame announces after its header.
func (e *FrameTooLargeError) Len() uint64 { return uint64(e.OptionsLen) + uint64(e.BodyLen) }

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("p11rpc: frame of %d+%d bytes over the limit of %d", e.OptionsLen, e.BodyLen, e.Max)
}

// SkipFrame reads and discards the options and body of the frame whose header ReadFrame refused with e,
// allocating nothing for them but the first head bytes of the body (or the whole body when shorter), which
// it returns: the call id and the first arguments (ParseRequestHead). A stream that ends first gives
// io.ErrUnexpectedEOF.
func SkipFrame(r io.Reader, e *FrameTooLargeError, head int) ([]byte, error) {
	unexpected := func(err error) error {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if _, err := io.CopyN(io.Discard, r, int64(e.OptionsLen)); err != nil {
		return nil, unexpected(err)
	}
	h := make([]byte, min(uint64(max(head, 0)), uint64(e.BodyLen)))
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, unexpected(err)
	}
	if _, err := io.CopyN(io.Discard, r, int64(e.BodyLen)-int64(len(h))); err != nil {
		return nil, unexpected(err)
	}
	return h, nil
}

// ParseRequestHead reads what the start of a request body says: the call id (CallError when there is no
// known one) and, when the call's request signature (which must be the table's) starts with a 'u', that
// first argument — the session handle of every call that has one; hasFirst is false when the head is too
// short or wrong to tell.
func ParseRequestHead(head []byte) (call CallID, first uint64, hasFirst bool) {
	d := &decoder{b: head}
	id, err := d.u32("call id")
	if err != nil || id >= uint32(callMax) {
		return CallError, 0, false
	}
	call = CallID(id)
	sig, err := d.bytes("signature")
	if err != nil || call == CallError || string(sig) != calls[call].Request || !strings.HasPrefix(string(sig), "u") {
		return call, 0, false
	}
	if first, err = d.u64("ulong"); err != nil {
		return call, 0, false
	}
	return call, first, true
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
