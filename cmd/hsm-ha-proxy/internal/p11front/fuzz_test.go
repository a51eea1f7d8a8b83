package p11front

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// FuzzDispatch feeds arbitrary request bodies to an initialised connection with an open session and an
// active search: every body gets a reply that is either the call's own or an error reply, and nothing
// panics (a panic would be answered too, but logged: the test fails on that log line).
func FuzzDispatch(f *testing.F) {
	f.Add(initialize)
	f.Add(request(p11rpc.CallGetSlotList, "yfu", []byte{1}, []byte{0, 0, 0, 8}))
	f.Add(request(p11rpc.CallSignInit, "uMu", u64(1), []byte{0, 0, 0, 0, 1, 0, 0, 0, 0}, u64(1)))
	f.Add(request(p11rpc.CallSign, "uayfy", u64(1), []byte{1, 0, 0, 0, 1, 7}, []byte{0, 0, 1, 0}))
	f.Add(request(p11rpc.CallGetAttributeValue, "uufA", u64(1), u64(1), []byte{0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0}))
	f.Add(request(p11rpc.CallFindObjectsInit, "uaA", u64(1), []byte{0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 3}))
	f.Add(request(p11rpc.CallDecryptInit, "uMu", u64(1), []byte{0, 0, 0, 9, 1, 0, 0, 0, 0}, u64(1)))
	rsaKey, ecKey, edKey := softSigners(f)
	be := newFakeBackend()
	be.add("payments", "rsa-key", []byte{1}, rsaKey)
	be.add("payments", "ec-key", []byte{2}, ecKey)
	be.add("payments", "ed-key", []byte{4}, edKey)
	logs := &syncBuffer{}
	srv := New(be, fakeAuth{os.Getuid(): {"payments"}}, Options{Partitions: []string{"payments"},
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	f.Fuzz(func(t *testing.T, body []byte) {
		c := &conn{s: srv, log: srv.log, sess: newSessionTable(), sem: make(chan struct{}, 1)}
		c.cred.UID = os.Getuid()
		c.initialized.Store(true)
		s, _ := c.sess.add(1, "payments", false)
		s.ops.Find = &findOp{Handles: []uint64{1, 2, 3}}
		call, _, out := c.dispatch(body)
		if len(out) < 4 {
			t.Fatalf("reply of %d bytes to %s", len(out), callName(call))
		}
		if strings.Contains(logs.String(), "panicked") {
			t.Fatalf("a call panicked:\n%s", logs.String())
		}
	})
}
