package devicebackend

import (
	"bytes"
	"context"
	"crypto"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// The parent ↔ worker protocol (docs/ARCHITECTURE.md, "Process model"): length-prefixed frames over a
// socketpair. A frame is a big-endian u32 length of what follows, a u32 request id, a u8 message type and
// the payload. Replies carry the request's id and type|msgReply; the worker's unsolicited events carry id
// 0. The first frame the parent sends is msgInit with the protocol version; a worker that speaks another
// version answers with an error and exits, so parent and worker binaries must match (they are the same
// binary). Control messages carry JSON; msgRun, the hot path, carries a compact binary Op.

// workerProtocol is the protocol version; bump it on any incompatible change.
const workerProtocol = 2

// maxWorkerFrame bounds a frame (a key listing with certificates is the largest message).
const maxWorkerFrame = 64 << 20

const (
	msgInit  byte = 1 // parent → worker: workerInit (JSON)
	msgOpen  byte = 2 // parent → worker: workerProbe (JSON); reply workerState
	msgProbe byte = 3 // parent → worker: workerProbe (JSON); reply workerState
	msgRun   byte = 4 // parent → worker: partition, timeout and deviceOp (binary); reply the output
	msgPIN   byte = 5 // parent → worker: workerPIN (JSON); reply a JSON bool
	msgClose byte = 6 // parent → worker: close the device and exit
	msgEvent byte = 7 // worker → parent (id 0): workerEvent (JSON)
	msgAdmin byte = 8 // parent → worker: workerAdmin (JSON); reply workerAdminReply (JSON)

	msgReply byte = 0x80 // a reply's type is the request's | msgReply

	replyOK  byte = 0
	replyErr byte = 1 // payload: wireError (JSON)
)

// frame is one decoded frame.
type frame struct {
	id      uint32
	typ     byte
	payload []byte
}

// writeFrame writes one frame in a single Write (callers serialise writers).
func writeFrame(w io.Writer, id uint32, typ byte, payload []byte) error {
	buf := make([]byte, 9, 9+len(payload))
	binary.BigEndian.PutUint32(buf[0:4], uint32(5+len(payload)))
	binary.BigEndian.PutUint32(buf[4:8], id)
	buf[8] = typ
	_, err := w.Write(append(buf, payload...))
	return err
}

// frameWriter writes frames from many goroutines with as few syscalls as the load allows: a goroutine
// that finds another writing leaves its frame in the buffer and returns, and the writer sends everything
// that piled up in one write before it lets go (flat combining; no goroutine of its own, so a lone call pays
// no extra wake-up). An error is the writer's to report: a frame left in the buffer by a caller that
// returned is lost with the connection, and that caller learns it from the connection's end.
type frameWriter struct {
	w       io.Writer
	mu      sync.Mutex
	pending []byte
	spare   []byte
	busy    bool
	err     error
}

// write queues one frame and, unless another goroutine is writing, writes the queue.
func (fw *frameWriter) write(id uint32, typ byte, payload []byte) error {
	var hdr [9]byte
	binary.BigEndian.PutUint32(hdr[0:4], uint32(5+len(payload)))
	binary.BigEndian.PutUint32(hdr[4:8], id)
	hdr[8] = typ
	fw.mu.Lock()
	if fw.err != nil {
		err := fw.err
		fw.mu.Unlock()
		return err
	}
	fw.pending = append(append(fw.pending, hdr[:]...), payload...)
	if fw.busy {
		fw.mu.Unlock()
		return nil
	}
	fw.busy = true
	for len(fw.pending) > 0 && fw.err == nil {
		buf := fw.pending
		fw.pending = fw.spare[:0]
		fw.mu.Unlock()
		_, err := fw.w.Write(buf)
		fw.mu.Lock()
		fw.spare, fw.err = buf, err
	}
	fw.busy = false
	err := fw.err
	fw.mu.Unlock()
	return err
}

// readFrame reads one frame.
func readFrame(r io.Reader) (frame, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	if n < 5 || n > maxWorkerFrame {
		return frame{}, fmt.Errorf("worker protocol: frame of %d bytes", n)
	}
	f := frame{id: binary.BigEndian.Uint32(hdr[4:8]), typ: hdr[8]}
	if n-5 <= 64<<10 {
		f.payload = make([]byte, n-5)
		_, err := io.ReadFull(r, f.payload)
		return f, err
	}
	// A large frame (a key listing) grows with what arrives, not with what the header claims.
	var b bytes.Buffer
	if _, err := io.CopyN(&b, r, int64(n-5)); err != nil {
		return frame{}, io.ErrUnexpectedEOF
	}
	f.payload = b.Bytes()
	return f, nil
}

// workerInit is everything a worker needs to serve its device. The PINs travel here, over the socketpair,
// never in the worker's argv or environment.
type workerInit struct {
	Protocol   int
	Device     DeviceSpec
	Partitions []PartitionSpec
	PINs       []string
	Own        Options
	LogLevel   int // slog.Level
}

// workerProbe asks for an open or a probe; HaveKeys is the key generation the parent holds.
type workerProbe struct {
	OthersServing bool
	Timeout       time.Duration
	HaveKeys      uint64
}

// workerState is the worker's device as the parent caches it, sent with every open and probe reply.
type workerState struct {
	Err     *wireError `json:",omitempty"` // the open's or probe's error
	Counts  wireCounts
	Parts   []PartInfo
	KeysGen uint64
	Keys    [][]wireKey `json:",omitempty"` // per partition (nil: not open); only when KeysGen moved
	// Secrets are the secret keys per partition, sent with Keys.
	Secrets [][]wireSecret `json:",omitempty"`
}

// wireSecret is a SecretObject without its handle: what identifies the key, never its value.
type wireSecret struct {
	Label   string
	ID      []byte
	KeyType uint
	Size    int
	KCV     []byte
}

// wireCounts is Counts on the wire.
type wireCounts struct {
	Reinits, Retired, Stuck int64
	LastErr                 string `json:",omitempty"`
	LastErrClass            errclass.Class
	CapRefusal              string `json:",omitempty"`
	Lanes, LanesOpen        int    `json:",omitempty"`
}

// wireKey is a KeyObject without its handle: the public half of a key, and its certificate.
type wireKey struct {
	Label       string
	ID          []byte
	PubDER      []byte
	Alg         string
	Cert        []byte `json:",omitempty"`
	CertIgnored string `json:",omitempty"`
}

// workerAdmin is an admin operation (admin.go) for one partition; HaveKeys is the key generation the
// parent holds, so that the reply carries the keys when the operation changed them.
type workerAdmin struct {
	Partition int
	Timeout   time.Duration
	HaveKeys  uint64
	Op        *AdminOp
}

// workerAdminReply is the operation's result and the device's state after it.
type workerAdminReply struct {
	Result *AdminResult
	State  *workerState
}

// workerPIN is a reloaded PIN for one partition.
type workerPIN struct {
	Partition int
	PIN       string
}

// workerEvent is something the worker's device noticed outside a reply: traffic proved it down, or its
// keys changed (a re-init found them again).
type workerEvent struct {
	Down        string `json:",omitempty"`
	KeysChanged bool   `json:",omitempty"`
}

// wireError carries this package's typed errors across the process boundary, so that the router and the
// callers branch on the same classes as in process.
type wireError struct {
	Kind      string // "device", "input", "mechanism", "signature", "deadline", "canceled", "other"
	Device    string `json:",omitempty"`
	Partition string `json:",omitempty"`
	Op        string `json:",omitempty"`
	Code      uint   `json:",omitempty"`
	Class     errclass.Class
	Msg       string
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	var de *errclass.DeviceError
	var ie *errclass.InputError
	var me *errclass.MechanismError
	var oc *errclass.ObjectCountError
	switch {
	case errors.As(err, &oc):
		return &wireError{Kind: "objects", Msg: oc.What, Code: uint(oc.Found), Class: errclass.ClassCaller}
	case errors.As(err, &de):
		w := &wireError{Kind: "device", Device: de.Device, Partition: de.Partition, Op: de.Op, Code: de.Code, Class: de.Class}
		if de.Err != nil {
			w.Msg = de.Err.Error()
		}
		return w
	case errors.As(err, &ie):
		return &wireError{Kind: "input", Msg: ie.Msg, Class: errclass.ClassCaller}
	case errors.As(err, &me):
		return &wireError{Kind: "mechanism", Device: me.Device, Msg: me.Mechanism, Class: errclass.ClassCaller}
	case errors.Is(err, context.DeadlineExceeded):
		return &wireError{Kind: "deadline", Msg: err.Error()}
	case errors.Is(err, context.Canceled):
		return &wireError{Kind: "canceled", Msg: err.Error()}
	}
	return &wireError{Kind: "other", Msg: err.Error(), Class: errclass.ClassOf(err)}
}

func (w *wireError) err() error {
	if w == nil {
		return nil
	}
	switch w.Kind {
	case "device":
		var inner error
		if w.Msg != "" {
			inner = errors.New(w.Msg)
		}
		if w.Code != 0 {
			inner = pkcs11.Error(w.Code)
		}
		return &errclass.DeviceError{Device: w.Device, Partition: w.Partition, Op: w.Op, Code: w.Code, Class: w.Class, Err: inner}
	case "input":
		return &errclass.InputError{Msg: w.Msg}
	case "mechanism":
		return &errclass.MechanismError{Device: w.Device, Mechanism: w.Msg}
	case "objects":
		return &errclass.ObjectCountError{What: w.Msg, Found: int(w.Code)}
	case "deadline":
		return context.DeadlineExceeded
	case "canceled":
		return context.Canceled
	}
	return &errclass.DeviceError{Class: errclass.ClassBusy, Op: "worker", Err: errors.New(w.Msg)}
}

// --- msgRun's binary payload ---

// opWriter appends the fields of a run request.
type opWriter []byte

func (w opWriter) u8(v byte) opWriter    { return append(w, v) }
func (w opWriter) u64(v uint64) opWriter { return binary.BigEndian.AppendUint64(w, v) }
func (w opWriter) bytes(b []byte) opWriter {
	return append(binary.BigEndian.AppendUint32(w, uint32(len(b))), b...)
}

// encodeRun is the msgRun payload: partition, timeout, then the operation.
func encodeRun(pi int, timeout time.Duration, op *Op) []byte {
	m := &op.Mech
	w := make(opWriter, 0, 128+len(op.Label)+len(op.PubDER)+len(op.Input)+len(m.OAEPLabel)+len(m.GCMIV)+len(m.GCMAAD)+len(m.CBCIV))
	w = w.u64(uint64(pi)).u64(uint64(timeout)).u8(byte(op.Kind))
	w = w.bytes([]byte(op.Label)).bytes(op.PubDER).bytes(op.Input)
	w = w.u64(uint64(m.Type)).u64(uint64(m.PSSHash)).u64(uint64(m.PSSMGF)).u64(uint64(m.PSSSalt))
	w = w.u64(uint64(m.OAEPHash)).u64(uint64(m.OAEPMGF)).bytes(m.OAEPLabel)
	w = w.bytes(m.GCMIV).bytes(m.GCMAAD).u64(uint64(m.GCMTagBits))
	w = w.u64(uint64(op.OutLen)).u8(boolByte(op.OAEPFallback)).u8(byte(op.OAEPHash)).u8(byte(op.OAEPMGFHash)).u64(uint64(op.KeySize))
	return w.u8(boolByte(op.GCMFallback)).bytes(m.CBCIV).u8(boolByte(op.CBCFallback))
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// opReader reads what opWriter wrote; the first short read sticks.
type opReader struct {
	b   []byte
	err error
}

func (r *opReader) take(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.err = errors.New("worker protocol: short run request")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *opReader) u8() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

// bool reads a flag: 0 or 1, anything else is a malformed request.
func (r *opReader) bool() bool {
	switch v := r.u8(); v {
	case 0:
		return false
	case 1:
		return true
	}
	if r.err == nil {
		r.err = errors.New("worker protocol: a flag that is neither 0 nor 1")
	}
	return false
}

func (r *opReader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *opReader) bytes() []byte {
	v := r.take(4)
	if v == nil {
		return nil
	}
	n := binary.BigEndian.Uint32(v)
	if int(n) > len(r.b) {
		r.err = errors.New("worker protocol: short run request")
		return nil
	}
	return r.take(int(n))
}

// decodeRun reads a msgRun payload.
func decodeRun(b []byte) (pi int, timeout time.Duration, op *Op, err error) {
	r := &opReader{b: b}
	pi, timeout = int(r.u64()), time.Duration(r.u64())
	op = &Op{Kind: OpKind(r.u8())}
	op.Label, op.PubDER, op.Input = string(r.bytes()), r.bytes(), r.bytes()
	m := &op.Mech
	m.Type, m.PSSHash, m.PSSMGF, m.PSSSalt = uint(r.u64()), uint(r.u64()), uint(r.u64()), uint(r.u64())
	m.OAEPHash, m.OAEPMGF, m.OAEPLabel = uint(r.u64()), uint(r.u64()), r.bytes()
	m.GCMIV, m.GCMAAD, m.GCMTagBits = r.bytes(), r.bytes(), uint(r.u64())
	op.OutLen = int(r.u64())
	op.OAEPFallback = r.bool()
	op.OAEPHash, op.OAEPMGFHash = crypto.Hash(r.u8()), crypto.Hash(r.u8())
	op.KeySize = int(r.u64())
	op.GCMFallback = r.bool()
	m.CBCIV, op.CBCFallback = r.bytes(), r.bool()
	if r.err == nil && len(r.b) != 0 {
		r.err = errors.New("worker protocol: trailing bytes in a run request")
	}
	return pi, timeout, op, r.err
}

// marshal is json.Marshal for the protocol's own types, which always encode.
func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("worker protocol: %v", err))
	}
	return b
}
