package p11rpc

import "errors"

var errNotImplemented = errors.New("p11rpc: not implemented yet")

// Request is a decoded request body. ParseRequest checks the whole body against the call's signature; the
// readers then hand out the arguments in signature order, each failing with a *ProtocolError when the next
// element of the signature is another one.
type Request struct {
	Call    CallID
	Version byte // the negotiated protocol version the request was parsed with
	body    []byte
	off     int
	sig     string
}

// ParseRequest decodes the call id and signature of body and checks that the arguments follow the call's
// request signature exactly, to the last byte. Errors are *ProtocolError.
func ParseRequest(body []byte, version byte) (*Request, error) {
	return nil, errNotImplemented
}

// Next is the next signature element to read ("u", "y", "ay", "fy", "fu", "fA", "aA", "M", "z", "s", ...),
// or "" when all are read.
func (r *Request) Next() string { return "" }

// Ulong reads a 'u': a CK_ULONG (8 bytes on the wire whatever the client's word size).
func (r *Request) Ulong() (uint64, error) { return 0, errNotImplemented }

// Byte reads a 'y'.
func (r *Request) Byte() (byte, error) { return 0, errNotImplemented }

// ByteArray reads an 'ay': nil for an absent (NULL) array, a non-nil (possibly empty) slice otherwise.
func (r *Request) ByteArray() ([]byte, error) { return nil, errNotImplemented }

// ByteBuffer reads an 'fy': the size of the output buffer the caller passed. null is true when the caller
// passed NULL (a size query). See the package documentation for how the client versions encode NULL versus a
// zero-length buffer.
func (r *Request) ByteBuffer() (n uint64, null bool, err error) { return 0, false, errNotImplemented }

// UlongBuffer reads an 'fu': the number of CK_ULONGs the caller has room for; null as for ByteBuffer.
func (r *Request) UlongBuffer() (n uint64, null bool, err error) { return 0, false, errNotImplemented }

// AttributeBuffer reads an 'fA' (C_GetAttributeValue's template): for each attribute its type and the size of
// the caller's buffer, or Null.
func (r *Request) AttributeBuffer() ([]AttributeRequest, error) { return nil, errNotImplemented }

// Attributes reads an 'aA': a template with values.
func (r *Request) Attributes() ([]Attribute, error) { return nil, errNotImplemented }

// Mechanism reads an 'M'. It returns nil when the client sent the NULL mechanism (an Init call that cancels
// the operation).
func (r *Request) Mechanism() (*Mechanism, error) { return nil, errNotImplemented }

// String reads a 'z' (C_InitToken's label).
func (r *Request) String() (string, error) { return "", errNotImplemented }

// SpaceString reads an 's' (C_InitToken2's label, 32 space-padded bytes), as sent.
func (r *Request) SpaceString() (string, error) { return "", errNotImplemented }

// Finish fails unless every element of the signature has been read.
func (r *Request) Finish() error { return errNotImplemented }
