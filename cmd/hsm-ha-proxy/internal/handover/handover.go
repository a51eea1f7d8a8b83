package handover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Version is the version of the channel's messages. A new process refuses a hello of another version, and
// the old one then closes its connections instead of passing them (docs/ARCHITECTURE.md, "Hot upgrade").
const Version = 1

// Kind says what a message carries.
type Kind string

// The messages, in the order the old process sends them.
const (
	// Hello is written before the new process starts (it waits in the socket): the channel's version and
	// whether the old process was ready, which decides what the new one must be before it says it serves.
	KindHello Kind = "hello"
	// KindPKCS11Objects is the PKCS#11 front end's object handles, sent once its connections are quiet and
	// before any of them, so that handles stay what the applications were given.
	KindPKCS11Objects Kind = "pkcs11-objects"
	// KindPKCS11Conn is one PKCS#11 connection: its socket and its state.
	KindPKCS11Conn Kind = "pkcs11-conn"
	// KindHTTPConn is one idle HTTP/1.1 keep-alive connection of the unix-socket API: its socket only.
	KindHTTPConn Kind = "http-conn"
	// KindDone ends the handover: nothing follows.
	KindDone Kind = "done"
)

// Hello is the body of KindHello.
type Hello struct {
	Version     int  `json:"version"`
	ParentReady bool `json:"parent_ready"`
	// PKCS11 says whether the old process serves the PKCS#11 front end: if so, the new one accepts PKCS#11
	// connections only after KindPKCS11Objects (or the end of the channel).
	PKCS11 bool `json:"pkcs11"`
}

// Message is one received message. File, when not nil, is the descriptor it carried; the receiver owns it.
type Message struct {
	Kind Kind
	Body json.RawMessage
	File *os.File
}

// header is the first packet of a message: the body follows in packets of at most chunk bytes.
type header struct {
	Kind Kind `json:"kind"`
	Len  int  `json:"len"`
}

const (
	// chunk is the largest packet: well under the default socket buffer (a SOCK_SEQPACKET packet must fit).
	chunk = 32 << 10
	// maxBody bounds a message's body (a connection's state is a few kilobytes; a hostile peer is not
	// expected, but a bug must not exhaust memory).
	maxBody = 64 << 20
)

// Pair returns the two ends of a new channel: the old process keeps parent, the new one inherits child.
func Pair() (parent, child *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("handover: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "handover-parent"), os.NewFile(uintptr(fds[1]), "handover-child"), nil
}

// Conn is one end of a channel. Send and Recv may be called from several goroutines.
type Conn struct {
	uc  *net.UnixConn
	wmu sync.Mutex
	rmu sync.Mutex
}

// Open makes an end of Pair a Conn; f is closed (the Conn holds its own descriptor).
func Open(f *os.File) (*Conn, error) {
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handover: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("handover: %T is not a unix socket", nc)
	}
	return &Conn{uc: uc}, nil
}

// Close closes this end: the other end reads io.EOF.
func (c *Conn) Close() error { return c.uc.Close() }

// SetDeadline bounds the Sends and Recvs to come.
func (c *Conn) SetDeadline(t time.Time) error { return c.uc.SetDeadline(t) }

// Send sends a message: body (encoded as JSON) and, when fd is not nil, a duplicate of that descriptor.
// The caller keeps fd and closes it when it likes.
func (c *Conn) Send(kind Kind, body any, fd *os.File) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("handover: encoding %s: %w", kind, err)
	}
	h, err := json.Marshal(header{Kind: kind, Len: len(b)})
	if err != nil {
		return err
	}
	var oob []byte
	if fd != nil {
		oob = syscall.UnixRights(int(fd.Fd()))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, _, err := c.uc.WriteMsgUnix(h, oob, nil); err != nil {
		return fmt.Errorf("handover: sending %s: %w", kind, err)
	}
	for len(b) > 0 {
		n := min(len(b), chunk)
		if _, err := c.uc.Write(b[:n]); err != nil {
			return fmt.Errorf("handover: sending %s: %w", kind, err)
		}
		b = b[n:]
	}
	return nil
}

// Recv receives the next message. At the end of the channel it returns io.EOF.
func (c *Conn) Recv() (Message, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	buf := make([]byte, chunk)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := c.uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return Message{}, err
	}
	if n == 0 && oobn == 0 {
		return Message{}, errEOF
	}
	f, err := fileOf(oob[:oobn])
	if err != nil {
		return Message{}, err
	}
	var h header
	if err := json.Unmarshal(buf[:n], &h); err != nil || h.Len < 0 || h.Len > maxBody {
		closeFile(f)
		return Message{}, fmt.Errorf("handover: bad message header %q", buf[:n])
	}
	body := make([]byte, 0, h.Len)
	for len(body) < h.Len {
		n, err := c.uc.Read(buf)
		if err == nil && n == 0 {
			err = errEOF
		}
		if err != nil {
			closeFile(f)
			return Message{}, fmt.Errorf("handover: reading %s: %w", h.Kind, err)
		}
		body = append(body, buf[:n]...)
	}
	if len(body) != h.Len {
		closeFile(f)
		return Message{}, fmt.Errorf("handover: %s: %d bytes, announced %d", h.Kind, len(body), h.Len)
	}
	return Message{Kind: h.Kind, Body: body, File: f}, nil
}

// errEOF is the end of the channel (a zero-length packet: the other end closed).
var errEOF = fmt.Errorf("handover: %w", errClosed)

var errClosed = errors.New("channel closed by the other process")

// IsEOF tells whether Recv's error is the end of the channel.
func IsEOF(err error) bool { return errors.Is(err, errClosed) || errors.Is(err, io.EOF) }

// fileOf returns the descriptor carried by a packet's control message, if any (more than one: all closed,
// an error).
func fileOf(oob []byte) (*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handover: control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		return nil, fmt.Errorf("handover: %d descriptors in one message, want 1", len(fds))
	}
	syscall.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), "handed-over"), nil
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// Sender passes a message to the new process of a hot upgrade (*Conn); the doors' HandOver take it.
type Sender interface {
	Send(kind Kind, body any, fd *os.File) error
}
