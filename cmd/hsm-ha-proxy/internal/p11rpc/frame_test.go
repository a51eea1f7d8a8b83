package p11rpc

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct{ client, want byte }{{0, 0}, {1, 1}, {2, 2}, {3, 2}, {255, 2}} {
		if got := Negotiate(tc.client); got != tc.want {
			t.Errorf("Negotiate(%d) = %d, want %d", tc.client, got, tc.want)
		}
	}
}

// headerOnly serves a frame header and fails the test if anything past it is read: ReadFrame must reject
// an absurd header before reading (or allocating for) the rest.
type headerOnly struct {
	t *testing.T
	r *bytes.Reader
}

func (h headerOnly) Read(p []byte) (int, error) {
	if h.r.Len() == 0 {
		h.t.Fatal("ReadFrame read past a rejected header")
	}
	return h.r.Read(p)
}

func TestReadFrame(t *testing.T) {
	frame := msg(nil).u32(0x10).u32(6).u32(3).y([]byte("client")...).y(1, 2, 3)
	tests := []struct {
		name     string
		in       []byte
		max      uint32
		want     Frame
		wantErr  string
		is       error
		tooLarge *FrameTooLargeError // the error ReadFrame gives for a frame over the limit
	}{
		{name: "frame", in: frame, max: 9, want: Frame{Code: 0x10, Options: []byte("client"), Body: []byte{1, 2, 3}}},
		{name: "no options", in: msg(nil).u32(1).u32(0).u32(1).y(9), max: 1, want: Frame{Code: 1, Options: []byte{}, Body: []byte{9}}},
		{name: "clean EOF", in: nil, max: 9, is: io.EOF},
		{name: "header cut", in: frame[:5], max: 9, is: io.ErrUnexpectedEOF},
		{name: "body cut", in: frame[:len(frame)-1], max: 9, is: io.ErrUnexpectedEOF},
		{name: "body missing", in: frame[:HeaderLen], max: 9, is: io.ErrUnexpectedEOF},
		{name: "over the limit", in: frame, max: 8, wantErr: "over the limit", tooLarge: &FrameTooLargeError{0x10, 6, 3, 8}},
		{name: "code 0", in: msg(nil).u32(0).u32(0).u32(0), max: 9, wantErr: "code 0"},
		{name: "absurd lengths", in: msg(nil).u32(1).u32(0xffffffff).u32(0xffffffff), max: 1 << 20, wantErr: "over the limit",
			tooLarge: &FrameTooLargeError{1, 0xffffffff, 0xffffffff, 1 << 20}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r io.Reader = bytes.NewReader(tc.in)
			if tc.wantErr != "" {
				r = headerOnly{t, bytes.NewReader(tc.in)}
			}
			got, err := ReadFrame(r, tc.max)
			switch {
			case tc.is != nil:
				if !errors.Is(err, tc.is) {
					t.Fatalf("ReadFrame = %v, want %v", err, tc.is)
				}
			case tc.tooLarge != nil:
				var tl *FrameTooLargeError
				if !errors.As(err, &tl) || *tl != *tc.tooLarge || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadFrame = %#v, want %#v", err, tc.tooLarge)
				}
			case tc.wantErr != "":
				var pe *ProtocolError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadFrame = %v, want a ProtocolError saying %q", err, tc.wantErr)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if got.Code != tc.want.Code || !bytes.Equal(got.Options, tc.want.Options) || !bytes.Equal(got.Body, tc.want.Body) {
					t.Fatalf("ReadFrame = %+v, want %+v", got, tc.want)
				}
			}
		})
	}
}

// TestSkipFrame: a frame over the limit is skipped whole, its head kept, and the next frame reads as usual;
// the head tells the call and its session.
func TestSkipFrame(t *testing.T) {
	sign := msg(nil).u32(uint32(CallSign)).array([]byte("uayfy")).u64(7).y(1).u32(300).y(make([]byte, 300)...).u32(64)
	next := msg(nil).u32(0x12).u32(0).u32(2).y(5, 6)
	stream := append(msg(nil).u32(0x11).u32(6).u32(uint32(len(sign))).y([]byte("client")...).y(sign...), next...)
	for _, head := range []int{0, 8, 64, 1 << 20} {
		r := bytes.NewReader(stream)
		_, err := ReadFrame(r, 100)
		var tl *FrameTooLargeError
		if !errors.As(err, &tl) || tl.Code != 0x11 || tl.Len() != uint64(6+len(sign)) {
			t.Fatalf("ReadFrame = %v", err)
		}
		h, err := SkipFrame(r, tl, head)
		if err != nil || !bytes.Equal(h, sign[:min(head, len(sign))]) {
			t.Fatalf("SkipFrame(%d) = %d bytes, %v", head, len(h), err)
		}
		f, err := ReadFrame(r, 100)
		if err != nil || f.Code != 0x12 || !bytes.Equal(f.Body, []byte{5, 6}) {
			t.Fatalf("the frame after a skipped one: %+v, %v", f, err)
		}
	}
	r := bytes.NewReader(stream[:HeaderLen+20])
	_, err := ReadFrame(r, 100)
	var tl *FrameTooLargeError
	if !errors.As(err, &tl) {
		t.Fatal(err)
	}
	if _, err := SkipFrame(r, tl, 64); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("SkipFrame of a frame cut short: %v", err)
	}

	for _, tc := range []struct {
		name     string
		head     []byte
		call     CallID
		first    uint64
		hasFirst bool
	}{
		{"C_Sign", sign[:64], CallSign, 7, true},
		{"cut in the session", sign[:20], CallSign, 0, false},
		{"no session", msg(nil).u32(uint32(CallGetSlotList)).array([]byte("yfu")).y(1), CallGetSlotList, 0, false},
		{"wrong signature", msg(nil).u32(uint32(CallSign)).array([]byte("u")).u64(7), CallSign, 0, false},
		{"unknown call", msg(nil).u32(500).array([]byte("u")).u64(7), CallError, 0, false},
		{"empty", nil, CallError, 0, false},
	} {
		call, first, has := ParseRequestHead(tc.head)
		if call != tc.call || first != tc.first || has != tc.hasFirst {
			t.Errorf("%s: ParseRequestHead = %v, %d, %v", tc.name, call, first, has)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	frames := []Frame{{Code: 1, Body: ErrorReply(0x30)}, {Code: 2, Options: []byte("client"), Body: []byte{7}}, {Code: 3}}
	for _, f := range frames {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range frames {
		got, err := ReadFrame(&buf, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		if got.Code != want.Code || !bytes.Equal(got.Options, want.Options) || !bytes.Equal(got.Body, want.Body) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	}
	if _, err := ReadFrame(&buf, 1<<10); err != io.EOF {
		t.Fatalf("after the last frame: %v", err)
	}
}

// oneWrite counts Write calls: a frame goes out in one, so that writers that serialise their calls never
// interleave frames.
type oneWrite struct{ n int }

func (w *oneWrite) Write(p []byte) (int, error) { w.n++; return len(p), nil }

func TestWriteFrameOneWrite(t *testing.T) {
	var w oneWrite
	if err := WriteFrame(&w, Frame{Code: 5, Options: []byte("x"), Body: make([]byte, 1000)}); err != nil || w.n != 1 {
		t.Fatalf("WriteFrame: %d writes, %v", w.n, err)
	}
}

func TestCallTable(t *testing.T) {
	names := map[string]bool{}
	for id := CallID(0); id < 90; id++ {
		s, ok := Spec(id)
		if !ok || s.ID != id || s.Name == "" || s.Response == "" && id == CallError {
			t.Fatalf("Spec(%d) = %+v, %v", id, s, ok)
		}
		if names[s.Name] {
			t.Fatalf("%s twice", s.Name)
		}
		names[s.Name] = true
		if id != CallError && (!strings.HasPrefix(s.Name, "C_") || id.String() != s.Name) {
			t.Fatalf("call %d named %q (String %q)", id, s.Name, id)
		}
		// Every request element has a reader.
		for _, e := range splitSig(s.Request) {
			if !strings.Contains(" u y ay fy fu fA aA M z s ", " "+e+" ") {
				t.Fatalf("%s: request element %q", s.Name, e)
			}
		}
	}
	if _, ok := Spec(90); ok || CallID(90).String() != "call(90)" {
		t.Fatal("call id 90 exists")
	}
	for id, name := range map[CallID]string{1: "C_Initialize", 42: "C_SignInit", 43: "C_Sign", 65: "C_WaitForSlotEvent",
		66: "C_LoginUser", 87: "C_MessageVerifyFinal", 88: "C_InitToken2", 89: "C_DeriveKey2"} {
		if id.String() != name {
			t.Errorf("call %d is %s, want %s", id, id, name)
		}
	}
}
