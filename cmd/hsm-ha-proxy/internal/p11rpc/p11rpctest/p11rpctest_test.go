package p11rpctest

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// reencode reads every argument of r and writes it again with Call.
func reencode(t *testing.T, r *p11rpc.Request) []byte {
	t.Helper()
	enc := r.Version
	if r.MechanismV2 {
		enc = 2 // a 0.25.6+ client, whatever the connection's version (p11-kit issue #733)
	}
	c := NewCall(r.Call, enc)
	for e := r.Next(); e != ""; e = r.Next() {
		switch e {
		case "u":
			c.Ulong(r.Ulong())
		case "y":
			c.Byte(r.Byte())
		case "ay":
			c.ByteArray(r.ByteArray())
		case "fy":
			c.ByteBuffer(r.ByteBuffer())
		case "fu":
			n, _ := r.UlongBuffer()
			c.UlongBuffer(n)
		case "fA":
			c.AttributeBuffer(r.AttributeBuffer())
		case "aA":
			c.Attributes(r.Attributes())
		case "M":
			c.Mechanism(r.Mechanism())
		case "z":
			c.String(r.CString())
		default:
			t.Fatalf("element %q", e)
		}
	}
	if err := r.Finish(); err != nil {
		t.Fatal(err)
	}
	b, err := c.Body()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCallMatchesTheRealClient: every request the real p11-kit clients sent (0.24.1 and 0.26.4, in package
// p11rpc's testdata/golden*), decoded by p11rpc and written again by Call, is the same bytes.
func TestCallMatchesTheRealClient(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "testdata", "golden*", "*.txt"))
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	n := 0
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		version := byte(0)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) == 3 && fs[0] == "hs" && fs[1] == "s" {
				v, err := hex.DecodeString(fs[2])
				if err != nil || len(v) != 1 {
					t.Fatalf("handshake %q", fs[2])
				}
				version = v[0]
			}
			if len(fs) != 4 || fs[0] != "c" {
				continue
			}
			body, err := hex.DecodeString(fs[3])
			if err != nil {
				t.Fatal(err)
			}
			r, err := p11rpc.ParseRequest(body, version)
			if err != nil {
				t.Fatal(err)
			}
			if got := reencode(t, r); !bytes.Equal(got, body) {
				t.Fatalf("%s: %s re-encoded\n got %x\nwant %x", filepath.Base(path), r.Call, got, body)
			}
			n++
		}
	}
	if n < 200 {
		t.Fatalf("only %d requests checked", n)
	}
}

// TestCallVersion2 writes requests in the version 2 encodings and reads them back with p11rpc.
func TestCallVersion2(t *testing.T) {
	mechs := []*p11rpc.Mechanism{
		{Type: 0x1041}, // ECDSA: parameterless, the type alone
		{Type: 0x0d, PSS: &p11rpc.PSSParams{Hash: 0x250, MGF: 2, SaltLen: 32}},
		{Type: 0x09, OAEP: &p11rpc.OAEPParams{Hash: 0x220, MGF: 1, Label: []byte("l")}},
		{Type: 0x0d}, // PSS without a parameter: has-parameter byte 0 (before version 2 the client refuses it)
		nil,
	}
	for _, version := range []byte{0, 1, 2} {
		for _, m := range mechs {
			if version < 2 && m != nil && m.Type == 0x0d && m.PSS == nil {
				continue
			}
			body, err := NewCall(p11rpc.CallSignInit, version).Ulong(1).Mechanism(m).Ulong(2).Body()
			if err != nil {
				t.Fatal(err)
			}
			r, err := p11rpc.ParseRequest(body, version)
			if err != nil {
				t.Fatalf("version %d %+v: %v", version, m, err)
			}
			_ = r.Ulong()
			got := r.Mechanism()
			_ = r.Ulong()
			err = r.Finish()
			if err != nil || (got == nil) != (m == nil) || (m != nil && (got.Type != m.Type || (got.PSS == nil) != (m.PSS == nil) ||
				(got.OAEP == nil) != (m.OAEP == nil) || (m.OAEP != nil && !bytes.Equal(got.OAEP.Label, m.OAEP.Label)))) {
				t.Fatalf("version %d: Mechanism = %+v, %v; want %+v", version, got, err, m)
			}
			if m != nil && r.MechanismV2 != (version >= 2) {
				t.Fatalf("version %d: MechanismV2 = %v", version, r.MechanismV2)
			}
		}
	}
	body, err := NewCall(p11rpc.CallSign, 2).Ulong(1).ByteArray([]byte{1}).ByteBuffer(0, false).Body()
	if err != nil {
		t.Fatal(err)
	}
	r, err := p11rpc.ParseRequest(body, 2)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Ulong()
	_ = r.ByteArray()
	if n, null := r.ByteBuffer(); n != 0 || null || r.Finish() != nil {
		t.Fatalf("0-byte buffer read as %d, %v, %v", n, null, r.Finish())
	}
}

func TestCallOrder(t *testing.T) {
	if _, err := NewCall(p11rpc.CallSign, 0).ByteArray(nil).Body(); err == nil {
		t.Fatal("ay where u is due accepted")
	}
	if _, err := NewCall(p11rpc.CallSign, 0).Ulong(1).Body(); err == nil {
		t.Fatal("missing arguments accepted")
	}
}

// TestClient runs calls against a server made of p11rpc in a goroutine.
func TestClient(t *testing.T) {
	cs, ss := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- serveOne(ss) }()
	c, err := NewClient(cs, 3)
	if err != nil {
		t.Fatal(err)
	}
	if c.Version != 2 {
		t.Fatalf("negotiated %d", c.Version)
	}
	vals, err := c.Do(NewCall(p11rpc.CallGetSlotList, c.Version).Byte(1).UlongBuffer(0))
	if err != nil || len(vals) != 1 || vals[0].Present || vals[0].Len != 1 {
		t.Fatalf("GetSlotList size query = %+v, %v", vals, err)
	}
	vals, err = c.Do(NewCall(p11rpc.CallGetSlotList, c.Version).Byte(1).UlongBuffer(4))
	if err != nil || len(vals) != 1 || !vals[0].Present || len(vals[0].Ulongs) != 1 || vals[0].Ulongs[0] != 7 {
		t.Fatalf("GetSlotList = %+v, %v", vals, err)
	}
	_, err = c.Do(NewCall(p11rpc.CallLoginUser, c.Version).Ulong(1).Ulong(1).ByteArray(nil).ByteArray(nil))
	if !IsErrReply(err, 0x54) {
		t.Fatalf("C_LoginUser = %v, want CKR_FUNCTION_NOT_SUPPORTED", err)
	}
	reply, err := c.RoundTrip([]byte{0, 0, 0, 99})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeReply(reply, 99); !IsErrReply(err, 0x30) {
		t.Fatalf("garbage answered %x (%v)", reply, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// serveOne is the smallest server: one slot (7), everything else CKR_FUNCTION_NOT_SUPPORTED, a malformed
// request CKR_DEVICE_ERROR.
func serveOne(conn net.Conn) error {
	defer conn.Close()
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return err
	}
	version := p11rpc.Negotiate(b[0])
	if _, err := conn.Write([]byte{version}); err != nil {
		return err
	}
	for {
		f, err := p11rpc.ReadFrame(conn, 1<<20)
		if err != nil {
			return nil // the client closed
		}
		reply := p11rpc.ErrorReply(0x54)
		r, err := p11rpc.ParseRequest(f.Body, version)
		switch {
		case err != nil:
			reply = p11rpc.ErrorReply(0x30)
		case r.Call == p11rpc.CallGetSlotList:
			_ = r.Byte()
			n, null := r.UlongBuffer()
			w := p11rpc.NewReply(r.Call, version)
			if null || n < 1 {
				w.UlongArrayLen(1)
			} else {
				w.UlongArray([]uint64{7})
			}
			if reply, err = w.Body(); err != nil {
				return err
			}
		}
		if err := p11rpc.WriteFrame(conn, p11rpc.Frame{Code: f.Code, Body: reply}); err != nil {
			return err
		}
	}
}
