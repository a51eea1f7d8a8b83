package p11rpctest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// Client runs calls over one connection, one at a time, as a single-threaded p11-kit client does.
type Client struct {
	conn    net.Conn
	Version byte // the negotiated version
	mu      sync.Mutex
	code    uint32
}

// NewClient sends the handshake byte version on conn and reads the server's answer.
func NewClient(conn net.Conn, version byte) (*Client, error) {
	if _, err := conn.Write([]byte{version}); err != nil {
		return nil, fmt.Errorf("p11rpctest: handshake: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return nil, fmt.Errorf("p11rpctest: handshake: %w", err)
	}
	return &Client{conn: conn, Version: b[0], code: 0x10}, nil
}

// Do sends the call and returns the reply's values; an error reply is *ErrReply.
func (c *Client) Do(call *Call) ([]Value, error) {
	body, err := call.Body()
	if err != nil {
		return nil, err
	}
	reply, err := c.RoundTrip(body)
	if err != nil {
		return nil, err
	}
	return DecodeReply(reply, call.ID)
}

// RoundTrip sends a raw body (well-formed or not) in a frame and returns the reply's body.
func (c *Client) RoundTrip(body []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.code++
	if err := p11rpc.WriteFrame(c.conn, p11rpc.Frame{Code: c.code, Options: []byte("client"), Body: body}); err != nil {
		return nil, err
	}
	f, err := p11rpc.ReadFrame(c.conn, 1<<24)
	if err != nil {
		return nil, err
	}
	if f.Code != c.code {
		return nil, fmt.Errorf("p11rpctest: reply code %#x to request %#x", f.Code, c.code)
	}
	return f.Body, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// IsErrReply reports whether err is an error reply with rv.
func IsErrReply(err error, rv uint64) bool {
	var e *ErrReply
	return errors.As(err, &e) && e.RV == rv
}
