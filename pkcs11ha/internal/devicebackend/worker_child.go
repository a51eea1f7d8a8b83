package devicebackend

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// The worker side of policy.isolation "process" (docs/ARCHITECTURE.md, "Process model"): a process that
// loads one device's PKCS#11 module and serves the parent's requests with the in-process backend.

// workerEnv marks a process started as a device worker; fd 3 is its end of the socketpair.
const workerEnv = "PKCS11HA_DEVICE_WORKER"

// MaybeRunWorker is MaybeRunWorker of the library: it serves as a device worker and exits when this
// process was started as one, and returns at once otherwise.
func MaybeRunWorker() {
	if os.Getenv(workerEnv) == "" {
		return
	}
	// Started from /proc/self/exe (worker.go says why), the process would be named "exe" in the process
	// list; name it after the program, as its argv says. Linux only; elsewhere the write fails harmlessly.
	_ = os.WriteFile("/proc/self/comm", []byte(filepath.Base(os.Args[0])), 0)
	f := os.NewFile(3, "worker-socket")
	conn, err := net.FileConn(f)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pkcs11ha worker: fd 3 is not the parent's socket: %v\n", err)
		os.Exit(2)
	}
	f.Close()
	os.Exit(runWorker(conn))
}

// workerServer is one worker's state.
type workerServer struct {
	conn    net.Conn
	rd      *bufio.Reader
	fw      *frameWriter
	dev     *Device
	keysGen atomic.Uint64
	log     *slog.Logger
}

// runWorker serves the parent on conn until it goes away (EOF: the parent exited or killed us), and
// returns the exit status.
func runWorker(conn net.Conn) int {
	rd := bufio.NewReaderSize(conn, 64<<10)
	f, err := readFrame(rd)
	if err != nil || f.typ != msgInit {
		fmt.Fprintf(os.Stderr, "pkcs11ha worker: no init message: %v\n", err)
		return 2
	}
	var in workerInit
	if err := json.Unmarshal(f.payload, &in); err != nil || in.Protocol != workerProtocol {
		msg := fmt.Sprintf("worker speaks protocol %d, parent sent %d (%v)", workerProtocol, in.Protocol, err)
		_ = writeFrame(conn, f.id, f.typ|msgReply, append([]byte{replyErr}, marshal(&wireError{Kind: "other", Msg: msg})...))
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(in.LogLevel)}))
	w := &workerServer{conn: conn, rd: rd, fw: &frameWriter{w: conn}, log: log}
	s := &Settings{Devices: []DeviceSpec{in.Device}, Partitions: in.Partitions, PINs: in.PINs, Own: in.Own}
	d, err := NewDevice(s, 0, log)
	if err != nil {
		_ = writeFrame(conn, f.id, f.typ|msgReply, append([]byte{replyErr}, marshal(toWire(err))...))
		return 2
	}
	w.dev = d
	d.h.set(func() { w.keysGen.Add(1) }, func(reason string) { w.event(workerEvent{Down: reason}) })
	w.reply(f, nil, nil)
	return w.serve()
}

// serve reads requests until EOF; each runs on its own goroutine, so a call stuck in the module holds
// nothing but its own thread.
func (w *workerServer) serve() int {
	for {
		f, err := readFrame(w.rd)
		if err != nil {
			return 0 // the parent is gone
		}
		switch f.typ {
		case msgClose:
			w.dev.Close(w.dev.set.CloseTimeout)
			w.reply(f, nil, nil)
			return 0
		default:
			go w.handle(f)
		}
	}
}

func (w *workerServer) handle(f frame) {
	switch f.typ {
	case msgRun:
		pi, timeout, op, err := decodeRun(f.payload)
		if err != nil || pi < 0 || pi >= len(w.dev.Parts) {
			w.reply(f, nil, &errclass.InputError{Msg: fmt.Sprintf("worker: bad run request: %v", err)})
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		out, err := w.dev.Run(ctx, pi, op)
		cancel()
		w.reply(f, out, err)
	case msgOpen, msgProbe:
		var p workerProbe
		if err := json.Unmarshal(f.payload, &p); err != nil {
			w.reply(f, nil, err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
		var err error
		if f.typ == msgOpen {
			err = w.dev.Open(ctx)
		} else {
			err = w.dev.Probe(ctx, p.OthersServing)
		}
		cancel()
		w.reply(f, marshal(w.state(err, p.HaveKeys)), nil)
	case msgAdmin:
		w.handleAdmin(f)
	case msgPIN:
		var p workerPIN
		if err := json.Unmarshal(f.payload, &p); err != nil || p.Partition < 0 || p.Partition >= len(w.dev.Parts) {
			w.reply(f, nil, fmt.Errorf("worker: bad PIN message"))
			return
		}
		w.reply(f, marshal(w.dev.UsePIN(p.Partition, p.PIN)), nil)
	default:
		w.reply(f, nil, fmt.Errorf("worker: unknown message type %d", f.typ))
	}
}

// state is the device as the parent caches it; the keys only when they changed since have.
func (w *workerServer) state(err error, have uint64) *workerState {
	d := w.dev
	c := d.Counts()
	st := &workerState{Err: toWire(err), KeysGen: w.keysGen.Load(),
		Counts: wireCounts{Reinits: c.Reinits, Retired: c.Retired, Stuck: c.Stuck, CapRefusal: c.CapRefusal,
			Lanes: c.Lanes, LanesOpen: c.LanesOpen}}
	if c.LastErr != nil {
		st.Counts.LastErr, st.Counts.LastErrClass = c.LastErr.Msg, c.LastErr.Class
	}
	for pi := range d.Parts {
		st.Parts = append(st.Parts, d.Partition(pi))
	}
	if st.KeysGen != have {
		st.Keys = make([][]wireKey, len(d.Parts))
		st.Secrets = wireSecrets(d)
		for pi := range d.Parts {
			keys := d.Keys(pi)
			if keys == nil {
				continue
			}
			st.Keys[pi] = make([]wireKey, 0, len(keys))
			for _, k := range keys {
				st.Keys[pi] = append(st.Keys[pi], wireKey{Label: k.Label, ID: k.ID, PubDER: k.PubDER, Alg: k.Alg,
					Cert: k.Cert, CertIgnored: k.CertIgnored})
			}
		}
	}
	return st
}

// reply answers request f with payload, or with err.
func (w *workerServer) reply(f frame, payload []byte, err error) {
	b := []byte{replyOK}
	if err != nil {
		b = append([]byte{replyErr}, marshal(toWire(err))...)
	} else {
		b = append(b, payload...)
	}
	w.write(f.id, f.typ|msgReply, b)
}

func (w *workerServer) event(e workerEvent) { w.write(0, msgEvent, marshal(e)) }

func (w *workerServer) write(id uint32, typ byte, b []byte) {
	// An error means the parent is gone: the reader sees EOF and the worker exits.
	_ = w.fw.write(id, typ, b)
}

// wireSecrets is d's secret keys per partition, for the parent.
func wireSecrets(d *Device) [][]wireSecret {
	out := make([][]wireSecret, len(d.Parts))
	for pi := range d.Parts {
		keys := d.SecretKeys(pi)
		if keys == nil {
			continue
		}
		out[pi] = make([]wireSecret, 0, len(keys))
		for _, k := range keys {
			out[pi] = append(out[pi], wireSecret{Label: k.Label, ID: k.ID, KeyType: k.KeyType, Size: k.Size, KCV: k.KCV})
		}
	}
	return out
}

// handleAdmin runs an admin operation on the worker's device; the reply carries the device's state, with
// its keys when the operation changed them.
func (w *workerServer) handleAdmin(f frame) {
	var a workerAdmin
	if err := json.Unmarshal(f.payload, &a); err != nil || a.Op == nil || a.Partition < 0 || a.Partition >= len(w.dev.Parts) {
		w.reply(f, nil, &errclass.InputError{Msg: fmt.Sprintf("worker: bad admin request: %v", err)})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.Timeout)
	r, err := w.dev.Admin(ctx, a.Partition, a.Op)
	cancel()
	if err != nil {
		w.reply(f, nil, err)
		return
	}
	w.reply(f, marshal(&workerAdminReply{Result: r, State: w.state(nil, a.HaveKeys)}), nil)
}
