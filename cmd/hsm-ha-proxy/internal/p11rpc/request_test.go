package p11rpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// msg builds a body by hand, primitive by primitive, following the encoders of p11-kit 0.26.4's
// rpc-message.c (the versions they apply to are named at each use).
type msg []byte

func request(call CallID) msg {
	return msg(nil).u32(uint32(call)).array([]byte(calls[call].Request))
}
func (m msg) u32(v uint32) msg { return binary.BigEndian.AppendUint32(m, v) }
func (m msg) u64(v uint64) msg { return binary.BigEndian.AppendUint64(m, v) }
func (m msg) y(v ...byte) msg  { return append(m, v...) }

// array is p11_rpc_buffer_add_byte_array: length and bytes, nil as 0xffffffff.
func (m msg) array(v []byte) msg {
	if v == nil {
		return m.u32(0xffffffff)
	}
	return append(m.u32(uint32(len(v))), v...)
}

// ay is p11_rpc_message_write_byte_array: a presence byte, then the array (present) or its length (absent).
func (m msg) ay(v []byte) msg { return m.y(1).array(v) }

// attr is p11_rpc_buffer_add_attribute for a valid attribute whose value encoding is given.
func (m msg) attr(t uint32, length uint32, value msg) msg {
	return append(m.u32(t).y(1).u32(length), value...)
}

const (
	ckaClass        = 0x000
	ckaToken        = 0x001
	ckaLabel        = 0x003
	ckaID           = 0x102
	ckaSign         = 0x108
	ckaStartDate    = 0x110
	ckaModulusBits  = 0x121
	ckaWrapTemplate = 0x40000211
	ckaDeriveTmpl   = 0x40000213
	ckaAllowedMechs = 0x40000600
	ckmECDSA        = 0x1041
	ckmSHA256       = 0x250
	ckmECDH1Derive  = 0x1050
	ckmAESCBC       = 0x1082
)

func TestParseRequest(t *testing.T) {
	pss := msg(nil).u64(ckmSHA256).u64(2).u64(32)
	tests := []struct {
		name    string
		version byte
		body    msg
		check   func(t *testing.T, r *Request) // reads every argument
	}{
		{"v0 ECDSA: NULL parameter array", 0,
			request(CallSignInit).u64(7).u32(ckmECDSA).array(nil).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmECDSA}, 9, false)
			}},
		{"v2 ECDSA: the type alone (no-parameter mechanism)", 2,
			request(CallSignInit).u64(7).u32(ckmECDSA).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmECDSA}, 9, true)
			}},
		{"v2 PSS with parameter", 2,
			append(request(CallSignInit).u64(7).u32(ckmRSAPKCSPSS).y(1), pss...).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmRSAPKCSPSS, PSS: &PSSParams{ckmSHA256, 2, 32}}, 9, true)
			}},
		{"v2 PSS without parameter", 2,
			request(CallSignInit).u64(7).u32(ckmRSAPKCSPSS).y(0).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmRSAPKCSPSS}, 9, true)
			}},
		{"v1 SHA256-RSA-PKCS-PSS: 0.25.0 serializer, no has-parameter byte", 1,
			append(request(CallSignInit).u64(7).u32(0x43), pss...).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: 0x43, PSS: &PSSParams{ckmSHA256, 2, 32}}, 9, false)
			}},
		{"v2 OAEP with label", 2,
			request(CallDecryptInit).u64(7).u32(ckmRSAPKCSOAEP).y(1).u64(ckmSHA256).u64(2).u64(1).array([]byte("L")).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmRSAPKCSOAEP, OAEP: &OAEPParams{ckmSHA256, 2, 1, []byte("L")}}, 9, true)
			}},
		{"v2 AES-CBC IV", 2,
			request(CallEncryptInit).u64(7).u32(ckmAESCBC).y(1).array(bytes.Repeat([]byte{0xaa}, 16)).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmAESCBC, Param: bytes.Repeat([]byte{0xaa}, 16)}, 9, true)
			}},
		{"v2 NULL mechanism cancels", 2,
			request(CallSignInit).u64(7).u32(0xffffffff).u64(0),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, nil, 0, true)
			}},
		{"issue 733: v2 encoding on a version 0 connection", 0,
			request(CallSignInit).u64(7).u32(ckmECDSA).u64(9),
			func(t *testing.T, r *Request) {
				checkMech(t, r, 7, &Mechanism{Type: ckmECDSA}, 9, true)
			}},
		{"v0 encoding on a version 2 connection", 2,
			request(CallDigestInit).u64(7).u32(ckmSHA256).array(nil),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				m := r.Mechanism()
				if m == nil || m.Type != ckmSHA256 || r.MechanismV2 {
					t.Fatalf("Mechanism = %+v (v2 %v)", m, r.MechanismV2)
				}
			}},
		{"C_DeriveKey2 with ECDH1 parameters (structured, kept raw)", 2,
			request(CallDeriveKey2).u64(7).u32(ckmECDH1Derive).y(1).u64(1).array(nil).array([]byte{4, 1, 2}).u64(9).u32(0),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				m := r.Mechanism()
				raw := msg(nil).u64(1).array(nil).array([]byte{4, 1, 2})
				if m == nil || m.Type != ckmECDH1Derive || !bytes.Equal(m.Param, raw) || m.PSS != nil || m.OAEP != nil {
					t.Fatalf("Mechanism = %+v", m)
				}
				mustUlong(t, r, 9)
				if a := r.Attributes(); len(a) != 0 || r.Finish() != nil {
					t.Fatalf("Attributes = %v, %v", a, r.Finish())
				}
			}},
		{"fy: 0 is NULL (size query)", 0,
			request(CallSign).u64(7).ay([]byte{1, 2}).u32(0),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustBytes(t, r, []byte{1, 2})
				checkBuffer(t, r, 0, true)
			}},
		{"fy: 0xffffffff is a 0-byte buffer (0.25+)", 2,
			request(CallSign).u64(7).ay([]byte{1, 2}).u32(0xffffffff),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustBytes(t, r, []byte{1, 2})
				checkBuffer(t, r, 0, false)
			}},
		{"ay absent (0.24 NULL PIN): presence 0 and a length", 0,
			request(CallLogin).u64(7).u64(1).y(0).u32(0),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustUlong(t, r, 1)
				mustBytes(t, r, nil)
			}},
		{"ay NULL pointer of length 0 (0.25+): present, 0xffffffff", 2,
			request(CallLogin).u64(7).u64(1).y(1).u32(0xffffffff),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustUlong(t, r, 1)
				mustBytes(t, r, nil)
			}},
		{"ay empty", 2,
			request(CallLogin).u64(7).u64(1).ay([]byte{}),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustUlong(t, r, 1)
				mustBytes(t, r, []byte{})
			}},
		{"C_InitToken2: space-padded label (version 1)", 1,
			request(CallInitToken2).u64(1).ay([]byte("so")).array([]byte(PadString("tok", 32))),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 1)
				mustBytes(t, r, []byte("so"))
				if s := r.SpaceString(); s != PadString("tok", 32) {
					t.Fatalf("SpaceString = %q, %v", s, r.Finish())
				}
			}},
		{"C_InitToken: z label", 0,
			request(CallInitToken).u64(1).ay([]byte("so")).array([]byte("tok")),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 1)
				mustBytes(t, r, []byte("so"))
				if s := r.CString(); s != "tok" {
					t.Fatalf("CString = %q, %v", s, r.Finish())
				}
			}},
		{"C_LoginUser (PKCS#11 3.0 id 66)", 2,
			request(CallLoginUser).u64(7).u64(1).ay([]byte("pin")).ay([]byte("user")),
			func(t *testing.T, r *Request) {
				if r.Call != 66 {
					t.Fatalf("call %d", r.Call)
				}
				mustUlong(t, r, 7)
				mustUlong(t, r, 1)
				mustBytes(t, r, []byte("pin"))
				mustBytes(t, r, []byte("user"))
			}},
		{"fA flat (0.24): a template type's buffer does not nest", 0,
			request(CallGetAttributeValue).u64(7).u64(8).u32(2).u32(ckaWrapTemplate).u32(48).u32(ckaLabel).u32(0),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustUlong(t, r, 8)
				checkAttrBuffer(t, r, []AttributeRequest{{Type: ckaWrapTemplate, Len: 48}, {Type: ckaLabel, Null: true}})
			}},
		{"fA nested (0.25.4+)", 2,
			request(CallGetAttributeValue).u64(7).u64(8).u32(2).
				u32(ckaWrapTemplate).u32(48).u32(2).u32(ckaClass).u32(8).u32(ckaToken).u32(1).
				u32(ckaLabel).u32(5),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustUlong(t, r, 8)
				checkAttrBuffer(t, r, []AttributeRequest{{Type: ckaWrapTemplate, Len: 48}, {Type: ckaLabel, Len: 5}})
			}},
		{"fA on version 1: nested or not, whichever parses", 1,
			request(CallGetAttributeValue).u64(7).u64(8).u32(1).u32(ckaWrapTemplate).u32(24),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				mustUlong(t, r, 8)
				checkAttrBuffer(t, r, []AttributeRequest{{Type: ckaWrapTemplate, Len: 24}})
			}},
		{"aA every value kind", 2,
			request(CallCreateObject).u64(7).u32(8).
				attr(ckaClass, 8, msg(nil).u64(3)).
				attr(ckaToken, 1, msg(nil).y(1)).
				attr(ckaLabel, 3, msg(nil).array([]byte("abc"))).
				attr(ckaStartDate, 8, msg(nil).array([]byte("20260101"))).
				attr(ckaAllowedMechs, 16, msg(nil).u32(2).u64(ckmECDSA).u64(ckmSHA256)).
				attr(ckaWrapTemplate, 48, msg(nil).u32(2).attr(ckaSign, 1, msg(nil).y(0)).attr(ckaModulusBits, 8, msg(nil).u64(2048))).
				u32(ckaID).y(0). // invalid: ulValueLen -1
				attr(ckaLabel, 0, msg(nil).array(nil)),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				a := r.Attributes()
				if err := r.Finish(); err != nil {
					t.Fatal(err)
				}
				want := []Attribute{
					AttrUlong(ckaClass, 3), AttrBool(ckaToken, true), AttrBytes(ckaLabel, []byte("abc")),
					{Type: ckaStartDate, Valid: true, Value: []byte("20260101")},
					{Type: ckaAllowedMechs, Valid: true, Value: msg(nil).u64(ckmECDSA).u64(ckmSHA256)},
					AttrTemplate(ckaWrapTemplate, []Attribute{AttrBool(ckaSign, false), AttrUlong(ckaModulusBits, 2048)}),
					AttrInvalid(ckaID), {Type: ckaLabel, Valid: true},
				}
				checkAttrs(t, a, want)
				if v, err := a[0].Ulong(); err != nil || v != 3 {
					t.Errorf("Ulong = %d, %v", v, err)
				}
				if v, err := a[1].Bool(); err != nil || !v {
					t.Errorf("Bool = %v, %v", v, err)
				}
				if _, err := a[2].Ulong(); err == nil {
					t.Error("Ulong of a byte array succeeded")
				}
			}},
		{"aA CKA_DERIVE_TEMPLATE from a 0.24 client is a byte array", 0,
			request(CallCreateObject).u64(7).u32(1).attr(ckaDeriveTmpl, 2, msg(nil).array([]byte{1, 2})),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				a := r.Attributes()
				if err := r.Finish(); err != nil {
					t.Fatal(err)
				}
				checkAttrs(t, a, []Attribute{AttrBytes(ckaDeriveTmpl, []byte{1, 2})})
			}},
		{"templates nested 8 deep", 2, nestedTemplates(request(CallCreateObject).u64(7).u32(1), 8),
			func(t *testing.T, r *Request) {
				mustUlong(t, r, 7)
				r.Attributes()
				if err := r.Finish(); err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRequest(tc.body, tc.version)
			if err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			tc.check(t, r)
			if err := r.Finish(); err != nil {
				t.Fatal(err)
			}
			// A read past the last argument fails, and the failure sticks.
			r.Ulong()
			if err := r.Finish(); err == nil {
				t.Fatal("Ulong after the last argument succeeded")
			}
		})
	}
}

// nestedTemplates appends depth CKA_WRAP_TEMPLATE attributes each holding the next, then CKA_SIGN, as
// p11-kit's test_attribute_recursion_limit builds them.
func nestedTemplates(m msg, depth int) msg {
	inner := msg(nil).attr(ckaSign, 1, msg(nil).y(1))
	for i := 0; i < depth; i++ {
		inner = msg(nil).attr(ckaWrapTemplate, 24, msg(nil).u32(1).y(inner...))
	}
	return m.y(inner...)
}

func TestParseRequestErrors(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		body    msg
		want    string
	}{
		{"empty", 0, nil, "call id"},
		{"short call id", 0, msg{0, 0, 1}, "call id"},
		{"error pseudo-call", 0, msg(nil).u32(0).array([]byte("u")), "unknown call id 0"},
		{"unknown call id", 2, msg(nil).u32(90).array(nil), "unknown call id 90"},
		{"wrong signature", 0, msg(nil).u32(uint32(CallSign)).array([]byte("uay")), "signature"},
		{"NULL signature", 0, msg(nil).u32(uint32(CallFinalize)).array(nil), "signature"},
		{"short argument", 0, request(CallCloseSession).u32(1), "need 8 bytes"},
		{"trailing byte", 0, request(CallCloseSession).u64(1).y(0), "1 bytes after the last argument"},
		{"array length past the body", 0, request(CallLogin).u64(1).u64(1).y(1).u32(100).y(1, 2), "need 100 bytes"},
		{"array length out of range", 0, request(CallLogin).u64(1).u64(1).y(1).u32(0x7fffffff), "out of range"},
		{"presence byte 2", 0, request(CallLogin).u64(1).u64(1).y(2).u32(0), "presence byte 2"},
		{"absurd attribute count", 0, request(CallFindObjectsInit).u64(1).u32(0xffffffff), "cannot fit"},
		{"absurd fA count", 0, request(CallGetAttributeValue).u64(1).u64(1).u32(0x10000000), "cannot fit"},
		{"absurd mechanism list", 0, request(CallCreateObject).u64(1).u32(1).attr(ckaAllowedMechs, 8, msg(nil).u32(0xffffffff)), "cannot fit"},
		{"validity byte 7", 0, request(CallFindObjectsInit).u64(1).u32(1).u32(ckaLabel).y(7), "validity byte 7"},
		{"ulong longer than its length", 0, request(CallFindObjectsInit).u64(1).u32(1).attr(ckaClass, 4, msg(nil).u64(3)), "over its length"},
		{"date of 3 bytes", 0, request(CallFindObjectsInit).u64(1).u32(1).attr(ckaStartDate, 3, msg(nil).array([]byte("abc"))), "date of 3 bytes"},
		{"templates nested 9 deep", 2, nestedTemplates(request(CallCreateObject).u64(7).u32(1), 9), "nested deeper"},
		{"has-parameter byte 2", 2, request(CallSignInit).u64(1).u32(ckmRSAPKCSPSS).y(2).u64(1), "has-parameter byte 2"},
		{"PSS parameter cut short", 2, request(CallSignInit).u64(1).u32(ckmRSAPKCSPSS).y(1).u64(1).u64(1), "mechanism parameter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRequest(tc.body, tc.version)
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("ParseRequest = %v, %v; want a *ProtocolError", r, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if pe.Offset < 0 || pe.Offset > len(tc.body) {
				t.Fatalf("offset %d outside the %d-byte body", pe.Offset, len(tc.body))
			}
		})
	}
}

func TestReadersFollowTheSignature(t *testing.T) {
	body := request(CallSign).u64(7).ay([]byte{1}).u32(64)
	t.Run("in order", func(t *testing.T) {
		r, err := ParseRequest(body, 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Next() != "u" {
			t.Fatalf("Next = %q", r.Next())
		}
		mustUlong(t, r, 7)
		if err := r.Finish(); err == nil || !strings.Contains(err.Error(), "2 of 3 arguments not read") {
			t.Fatalf("Finish with two arguments unread = %v", err)
		}
		mustBytes(t, r, []byte{1})
		checkBuffer(t, r, 64, false)
		if r.Next() != "" {
			t.Fatalf("Next after the last = %q", r.Next())
		}
		if err := r.Finish(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the first wrong read sticks", func(t *testing.T) {
		r, err := ParseRequest(body, 0)
		if err != nil {
			t.Fatal(err)
		}
		if b := r.ByteArray(); b != nil {
			t.Fatalf("ByteArray where a ulong is due = %v", b)
		}
		// Every later read, even of the element due, gives the zero value: the handler checks Finish once.
		if v := r.Ulong(); v != 0 {
			t.Fatalf("Ulong after a failed read = %d", v)
		}
		if n, null := r.ByteBuffer(); n != 0 || null {
			t.Fatalf("ByteBuffer after a failed read = %d, %v", n, null)
		}
		if r.Next() != "" {
			t.Fatalf("Next after a failed read = %q", r.Next())
		}
		var pe *ProtocolError
		err = r.Finish()
		if !errors.As(err, &pe) || pe.Call != CallSign || pe.Offset == 0 || !strings.Contains(err.Error(), `read "ay": argument 0 is "u"`) {
			t.Fatalf("Finish = %v; want the first failure", err)
		}
	})
}

func TestCarried(t *testing.T) {
	tests := []struct {
		mech    uint64
		version byte
		want    bool
	}{
		{0x1, 0, true},             // RSA_PKCS
		{ckmRSAPKCSPSS, 0, true},   // RSA_PKCS_PSS
		{ckmRSAPKCSOAEP, 0, true},  // RSA_PKCS_OAEP
		{ckmECDSA, 0, true},        // ECDSA
		{0x40, 0, true},            // SHA256_RSA_PKCS
		{0x43, 0, false},           // SHA256_RSA_PKCS_PSS: not in 0.24
		{0x43, 2, true},            //   but in 0.25+
		{0x1044, 0, false},         // ECDSA_SHA256: not in 0.24
		{0x1044, 1, true},          //   but in 0.25+
		{0x1057, 0, false},         // EDDSA: never
		{0x1057, 2, false},         //
		{ckmSHA256, 0, true},       // SHA256 digest
		{ckmAESCBC, 0, false},      // AES_CBC: 0.25+
		{0x80000123, 2, false},     // unknown vendor mechanism
		{ckmECDH1Derive, 2, true},  // ECDH1_DERIVE
		{ckmECDH1Derive, 0, false}, //
	}
	for _, tc := range tests {
		if got := Carried(tc.mech, tc.version); got != tc.want {
			t.Errorf("Carried(%#x, %d) = %v, want %v", tc.mech, tc.version, got, tc.want)
		}
	}
}

func checkMech(t *testing.T, r *Request, session uint64, want *Mechanism, key uint64, v2 bool) {
	t.Helper()
	mustUlong(t, r, session)
	m := r.Mechanism() // a failed read gives nil, and the caller's Finish fails
	if !mechEqual(m, want) {
		t.Fatalf("Mechanism = %+v, want %+v", m, want)
	}
	if r.MechanismV2 != v2 {
		t.Fatalf("MechanismV2 = %v, want %v", r.MechanismV2, v2)
	}
	mustUlong(t, r, key)
}

// TestMechanismClone: a clone is equal to the mechanism and shares no byte with the body it was read from.
func TestMechanismClone(t *testing.T) {
	for _, m := range []*Mechanism{
		nil,
		{Type: ckmECDSA},
		{Type: ckmRSAPKCSPSS, PSS: &PSSParams{Hash: 0x250, MGF: 2, SaltLen: 32}},
		{Type: ckmRSAPKCSOAEP, OAEP: &OAEPParams{Hash: 0x250, MGF: 2, Source: 1, Label: []byte("label")}},
		{Type: ckmAESCBC, Param: []byte("0123456789abcdef")},
	} {
		c := m.Clone()
		if !mechEqual(c, m) {
			t.Fatalf("Clone(%+v) = %+v", m, c)
		}
		if m == nil {
			continue
		}
		for _, b := range [][]byte{m.Param, oaepLabel(m)} {
			for i := range b {
				b[i] ^= 0xff
			}
		}
		if m.PSS != nil {
			m.PSS.SaltLen++
		}
		if (m.Param != nil || m.PSS != nil || m.OAEP != nil) && mechEqual(c, m) {
			t.Fatalf("the clone of %+v changed with it", m)
		}
	}
}

func oaepLabel(m *Mechanism) []byte {
	if m.OAEP == nil {
		return nil
	}
	return m.OAEP.Label
}

func mechEqual(a, b *Mechanism) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Type != b.Type || !bytes.Equal(a.Param, b.Param) || (a.Param == nil) != (b.Param == nil) {
		return false
	}
	if (a.PSS == nil) != (b.PSS == nil) || (a.PSS != nil && *a.PSS != *b.PSS) {
		return false
	}
	if (a.OAEP == nil) != (b.OAEP == nil) {
		return false
	}
	return a.OAEP == nil || (a.OAEP.Hash == b.OAEP.Hash && a.OAEP.MGF == b.OAEP.MGF &&
		a.OAEP.Source == b.OAEP.Source && bytes.Equal(a.OAEP.Label, b.OAEP.Label))
}

func mustUlong(t *testing.T, r *Request, want uint64) {
	t.Helper()
	if v := r.Ulong(); v != want {
		t.Fatalf("Ulong = %d, %v; want %d", v, r.Finish(), want)
	}
}

func mustBytes(t *testing.T, r *Request, want []byte) {
	t.Helper()
	v := r.ByteArray()
	if !bytes.Equal(v, want) || (v == nil) != (want == nil) {
		t.Fatalf("ByteArray = %#v, %v; want %#v", v, r.Finish(), want)
	}
}

func checkBuffer(t *testing.T, r *Request, n uint64, null bool) {
	t.Helper()
	gn, gnull := r.ByteBuffer()
	if gn != n || gnull != null {
		t.Fatalf("ByteBuffer = %d, %v, %v; want %d, %v", gn, gnull, r.Finish(), n, null)
	}
}

func checkAttrBuffer(t *testing.T, r *Request, want []AttributeRequest) {
	t.Helper()
	got := r.AttributeBuffer()
	if len(got) != len(want) {
		t.Fatalf("AttributeBuffer = %+v, want %+v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("AttributeBuffer[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// checkAttrs compares decoded attributes with built ones; a built one's Len 0 stands for its CLen.
func checkAttrs(t *testing.T, got, want []Attribute) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d attributes, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if w.Len == 0 && w.Valid {
			w.Len = w.CLen()
		}
		if g.Type != w.Type || g.Valid != w.Valid || g.Len != w.Len || !bytes.Equal(g.Value, w.Value) ||
			len(g.Template) != len(w.Template) {
			t.Fatalf("attribute %d = %+v, want %+v", i, g, w)
		}
		if len(w.Template) > 0 {
			checkAttrs(t, g.Template, w.Template)
		}
	}
}
