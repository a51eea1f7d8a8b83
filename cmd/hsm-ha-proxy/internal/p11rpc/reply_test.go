package p11rpc

import (
	"bytes"
	"strings"
	"testing"
)

func TestReplyEncoding(t *testing.T) {
	tests := []struct {
		name    string
		call    CallID
		version byte
		write   func(w *Reply)
		want    msg
	}{
		{"OpenSession", CallOpenSession, 0, func(w *Reply) { w.Ulong(0x11) },
			msg(nil).u32(10).array([]byte("u")).u64(0x11)},
		{"Finalize: empty signature", CallFinalize, 0, func(w *Reply) {},
			msg(nil).u32(2).array([]byte(""))},
		{"Sign: the signature", CallSign, 0, func(w *Reply) { w.ByteArray([]byte{1, 2, 3}) },
			msg(nil).u32(uint32(CallSign)).array([]byte("ay")).y(1).array([]byte{1, 2, 3})},
		{"Sign: a length only (size query or CKR_BUFFER_TOO_SMALL)", CallSign, 0, func(w *Reply) { w.ByteArrayLen(256) },
			msg(nil).u32(uint32(CallSign)).array([]byte("ay")).y(0).u32(256)},
		{"Sign: nil is an empty array", CallSign, 0, func(w *Reply) { w.ByteArray(nil) },
			msg(nil).u32(uint32(CallSign)).array([]byte("ay")).y(1).u32(0)},
		{"GetSlotList", CallGetSlotList, 0, func(w *Reply) { w.UlongArray([]uint64{1, 2}) },
			msg(nil).u32(4).array([]byte("au")).y(1).u32(2).u64(1).u64(2)},
		{"GetSlotList count only", CallGetSlotList, 0, func(w *Reply) { w.UlongArrayLen(3) },
			msg(nil).u32(4).array([]byte("au")).y(0).u32(3)},
		{"GetInfo pads its strings", CallGetInfo, 0, func(w *Reply) {
			w.Version(2, 40)
			w.String("pkcs11-ha")
			w.Ulong(0)
			w.String("PKCS#11 front end")
			w.Version(1, 0)
		}, msg(nil).u32(3).array([]byte("vsusv")).y(2, 40).array([]byte(PadString("pkcs11-ha", 32))).u64(0).
			array([]byte(PadString("PKCS#11 front end", 32))).y(1, 0)},
		{"GetAttributeValue: value, size, invalid, then CK_RV", CallGetAttributeValue, 0, func(w *Reply) {
			w.Attributes([]Attribute{
				AttrUlong(ckaClass, 3), AttrBool(ckaSign, true), AttrBytes(ckaID, []byte{2}),
				AttrSize(ckaLabel, 7), AttrSize(ckaModulusBits, 8), AttrSize(ckaToken, 1), AttrInvalid(0x11),
				AttrBytes(ckaLabel, nil),
			})
			w.Ulong(0x12) // CKR_ATTRIBUTE_TYPE_INVALID
		}, msg(nil).u32(24).array([]byte("aAu")).u32(8).
			attr(ckaClass, 8, msg(nil).u64(3)).
			attr(ckaSign, 1, msg(nil).y(1)).
			attr(ckaID, 1, msg(nil).array([]byte{2})).
			attr(ckaLabel, 7, msg(nil).array(nil)). // as p11-kit's server: the length, a NULL array
			attr(ckaModulusBits, 8, msg(nil).u64(0)).
			attr(ckaToken, 1, msg(nil).y(0)).
			u32(0x11).y(0).
			attr(ckaLabel, 0, msg(nil).array([]byte{})).
			u64(0x12)},
		{"GetAttributeValue: dates, mechanism lists, templates (v2)", CallGetAttributeValue, 2, func(w *Reply) {
			w.Attributes([]Attribute{
				{Type: ckaStartDate, Valid: true, Value: []byte("20260101")},
				{Type: ckaAllowedMechs, Valid: true, Value: msg(nil).u64(ckmECDSA)},
				AttrTemplate(ckaWrapTemplate, []Attribute{AttrBool(ckaSign, false)}),
				AttrSize(ckaAllowedMechs, 16),
			})
			w.Ulong(0)
		}, msg(nil).u32(24).array([]byte("aAu")).u32(4).
			attr(ckaStartDate, 8, msg(nil).array([]byte("20260101"))).
			attr(ckaAllowedMechs, 8, msg(nil).u32(1).u64(ckmECDSA)).
			attr(ckaWrapTemplate, 24, msg(nil).u32(1).attr(ckaSign, 1, msg(nil).y(0))).
			attr(ckaAllowedMechs, 16, msg(nil).u32(0)).
			u64(0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewReply(tc.call, tc.version)
			tc.write(w)
			got, err := w.Body()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("Body\n got %x\nwant %x", got, []byte(tc.want))
			}
			// The client side reads it back.
			call, vals, err := decodeReply(got, tc.version)
			if err != nil || call != tc.call {
				t.Fatalf("decodeReply = %s, %v", call, err)
			}
			again, err := encodeReply(call, tc.version, vals)
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("re-encoded %x, %v", again, err)
			}
		})
	}
}

func TestReplyErrors(t *testing.T) {
	tests := []struct {
		name    string
		call    CallID
		version byte
		write   func(w *Reply)
		want    string
	}{
		{"nothing written", CallOpenSession, 0, func(w *Reply) {}, "0 of 1 elements written"},
		{"wrong element", CallSign, 0, func(w *Reply) { w.Ulong(1) }, `"u" written where "ay" is due`},
		{"one too many", CallOpenSession, 0, func(w *Reply) { w.Ulong(1); w.Ulong(2) }, "after the last element"},
		{"the first error sticks", CallGetMechanismInfo, 0, func(w *Reply) { w.Byte(1); w.Ulong(1); w.Ulong(2); w.Ulong(3) }, `"y" written where "u" is due`},
		{"unknown call", 90, 0, func(w *Reply) {}, "unknown call id 90"},
		{"C_DeriveKey2's P is not written by this codec", CallDeriveKey2, 2, func(w *Reply) { w.Ulong(1) }, "1 of 3 elements written"},
		{"template to a 0.24 client", CallGetAttributeValue, 0, func(w *Reply) {
			w.Attributes([]Attribute{AttrTemplate(ckaWrapTemplate, nil)})
			w.Ulong(0)
		}, "version 0 client cannot decode a template"},
		{"bool of 2 bytes", CallGetAttributeValue, 0, func(w *Reply) {
			w.Attributes([]Attribute{{Type: ckaSign, Valid: true, Value: []byte{1, 1}}})
			w.Ulong(0)
		}, "bool value of 2 bytes"},
		{"ulong of 4 bytes", CallGetAttributeValue, 0, func(w *Reply) {
			w.Attributes([]Attribute{{Type: ckaClass, Valid: true, Value: []byte{0, 0, 0, 3}}})
			w.Ulong(0)
		}, "ulong value of 4 bytes"},
		{"template on a byte-array type", CallGetAttributeValue, 2, func(w *Reply) {
			w.Attributes([]Attribute{AttrTemplate(ckaLabel, nil)})
			w.Ulong(0)
		}, "template value for a bytes attribute"},
		{"attribute type over 32 bits", CallGetAttributeValue, 2, func(w *Reply) {
			w.Attributes([]Attribute{AttrInvalid(1 << 33)})
			w.Ulong(0)
		}, "does not fit the wire"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewReply(tc.call, tc.version)
			tc.write(w)
			b, err := w.Body()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Body = %x, %v; want an error saying %q", b, err, tc.want)
			}
		})
	}
}

func TestErrorReply(t *testing.T) {
	// As p11-kit's server answers a wrong PIN (captured in testdata/golden/wrong-pin.txt).
	want := msg(nil).u32(0).array([]byte("u")).u64(0xa0)
	if got := ErrorReply(0xa0); !bytes.Equal(got, want) {
		t.Fatalf("ErrorReply = %x, want %x", got, []byte(want))
	}
	call, vals, err := decodeReply(ErrorReply(0x54), 0)
	if err != nil || call != CallError || vals[0].u != 0x54 {
		t.Fatalf("decodeReply = %s %+v %v", call, vals, err)
	}
}

func TestPadString(t *testing.T) {
	tests := []struct {
		in    string
		width int
		want  string
	}{
		{"abc", 5, "abc  "},
		{"", 3, "   "},
		{"abcde", 5, "abcde"},
		{"abcdef", 5, "abcde"},
		{"abcdé", 5, "abcd "}, // é is 2 bytes: cut before it, then pad
		{"日本", 4, "日 "},       // 3-byte characters
	}
	for _, tc := range tests {
		if got := PadString(tc.in, tc.width); got != tc.want || len(got) != tc.width {
			t.Errorf("PadString(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

func TestReplyStringWidths(t *testing.T) {
	w := NewReply(CallGetTokenInfo, 0)
	long := strings.Repeat("x", 40)
	for _, s := range []string{long, "m", "model", "serial"} {
		w.String(s)
	}
	for i := 0; i < 11; i++ {
		w.Ulong(uint64(i))
	}
	w.Version(1, 0)
	w.Version(2, 0)
	w.String("")
	body, err := w.Body()
	if err != nil {
		t.Fatal(err)
	}
	_, vals, err := decodeReply(body, 0)
	if err != nil {
		t.Fatal(err)
	}
	widths := []int{32, 32, 16, 16}
	for i, want := range widths {
		if len(vals[i].b) != want {
			t.Errorf("string %d: %d bytes, want %d", i, len(vals[i].b), want)
		}
	}
	if string(vals[0].b) != long[:32] || len(vals[len(vals)-1].b) != 16 {
		t.Errorf("label %q, utcTime %q", vals[0].b, vals[len(vals)-1].b)
	}
}
