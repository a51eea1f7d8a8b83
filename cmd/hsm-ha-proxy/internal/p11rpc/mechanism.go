package p11rpc

// Mechanism is a decoded CK_MECHANISM.
//
// PSS is set for CKM_RSA_PKCS_PSS and CKM_SHA{1,224,256,384,512}_RSA_PKCS_PSS, OAEP for CKM_RSA_PKCS_OAEP,
// when the client sent a parameter. For any other mechanism Param is the parameter: the bytes for mechanisms
// whose parameter is a byte array (the usual case), or for the few with a structured encoding in p11-kit
// (ECDH1 derive, AES-GCM/CTR, *_MAC_GENERAL, IBM vendor mechanisms) the encoded fields as they came, which
// the front end does not interpret. Param, PSS and OAEP are all nil when there was no parameter.
type Mechanism struct {
	Type  uint64
	Param []byte
	PSS   *PSSParams
	OAEP  *OAEPParams
}

// PSSParams is CK_RSA_PKCS_PSS_PARAMS.
type PSSParams struct{ Hash, MGF, SaltLen uint64 }

// OAEPParams is CK_RSA_PKCS_OAEP_PARAMS; Label is pSourceData (nil when NULL).
type OAEPParams struct {
	Hash, MGF, Source uint64
	Label             []byte
}

// Mechanism types with a parameter encoding of their own in p11-kit (rpc-message.c's
// p11_rpc_mechanism_serializers); every other mechanism's parameter is a byte array.
const (
	ckmRSAPKCSOAEP = 0x09
	ckmRSAPKCSPSS  = 0x0d
)

// paramShapes spells each structured parameter encoding: q = uint64, a = byte array, y = byte. Only the PSS
// and OAEP shapes are decoded into fields; the others are walked so that the rest of the request still parses.
var paramShapes = map[uint64]string{
	ckmRSAPKCSPSS: "qqq", 0x0e: "qqq", 0x43: "qqq", 0x44: "qqq", 0x45: "qqq", 0x47: "qqq", // (SHA*_)RSA_PKCS_PSS
	ckmRSAPKCSOAEP: "qqqa",
	0x1050:         "qaa",     // ECDH1_DERIVE
	0x8001001b:     "qaa",     // IBM_EC_X25519
	0x8001001e:     "qaa",     // IBM_EC_X448
	0x80020004:     "q",       // IBM_ATTRIBUTEBOUND_WRAP
	0x80010031:     "q",       // IBM_ECDSA_OTHER
	0x80070001:     "qqaq",    // IBM_BTC_DERIVE
	0x80010024:     "qqqyaaq", // IBM_KYBER
	0x1086:         "qa",      // AES_CTR
	0x1087:         "aqaq",    // AES_GCM
	// *_HMAC_GENERAL and the MAC_GENERAL family: CK_MAC_GENERAL_PARAMS, one CK_ULONG.
	0x222: "q", 0x252: "q", 0x257: "q", 0x262: "q", 0x272: "q", 0x4a: "q", 0x4e: "q",
	0x1084: "q", 0x108b: "q", 0x135: "q", 0x137: "q",
}

// mechNull is the mechanism type p11-kit 0.25.3+ sends for a NULL CK_MECHANISM_PTR (an Init call that
// cancels the operation); nothing follows it.
const mechNull = 0xffffffff

// mechanism reads an 'M'. v2 selects the encoding of p11-kit 0.25.6+ (a has-parameter byte, then the
// parameter); otherwise the encoding of earlier versions (the parameter directly: a byte array, NULL when
// absent, or a structured encoding). A nil result is the NULL mechanism.
func (d *decoder) mechanism(v2 bool) (*Mechanism, error) {
	t, err := d.u32("mechanism type")
	if err != nil {
		return nil, err
	}
	if t == mechNull {
		return nil, nil
	}
	m := &Mechanism{Type: uint64(t)}
	if v2 {
		has, err := d.byte1("mechanism has-parameter byte")
		if err != nil {
			return nil, err
		}
		switch has {
		case 0:
			return m, nil
		case 1:
		default:
			d.off--
			return nil, d.fail("mechanism %#x: has-parameter byte %d", t, has)
		}
	}
	shape, structured := paramShapes[m.Type]
	if !structured {
		p, err := d.bytes("mechanism parameter")
		if err != nil {
			return nil, err
		}
		if p == nil && v2 {
			// The has-parameter byte said there is one: an empty parameter, not none.
			p = []byte{}
		}
		m.Param = p
		return m, nil
	}
	start := d.off
	var qs []uint64
	var arrays [][]byte
	for i := 0; i < len(shape); i++ {
		switch shape[i] {
		case 'q':
			v, err := d.u64("mechanism parameter field")
			if err != nil {
				return nil, err
			}
			qs = append(qs, v)
		case 'a':
			v, err := d.bytes("mechanism parameter field")
			if err != nil {
				return nil, err
			}
			arrays = append(arrays, v)
		case 'y':
			if _, err := d.byte1("mechanism parameter field"); err != nil {
				return nil, err
			}
		}
	}
	switch shape {
	case "qqq":
		m.PSS = &PSSParams{Hash: qs[0], MGF: qs[1], SaltLen: qs[2]}
	case "qqqa":
		m.OAEP = &OAEPParams{Hash: qs[0], MGF: qs[1], Source: qs[2], Label: arrays[0]}
	default:
		m.Param = d.b[start:d.off:d.off]
	}
	return m, nil
}
