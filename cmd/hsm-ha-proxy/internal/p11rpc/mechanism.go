package p11rpc

import "bytes"

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

// Clone is a deep copy of m, sharing nothing with the request body it was read from (nil for nil): what a
// server keeps past the call.
func (m *Mechanism) Clone() *Mechanism {
	if m == nil {
		return nil
	}
	c := &Mechanism{Type: m.Type, Param: bytes.Clone(m.Param)}
	if m.PSS != nil {
		pss := *m.PSS
		c.PSS = &pss
	}
	if m.OAEP != nil {
		oaep := *m.OAEP
		oaep.Label = bytes.Clone(m.OAEP.Label)
		c.OAEP = &oaep
	}
	return c
}

// PSSParams is CK_RSA_PKCS_PSS_PARAMS.
type PSSParams struct{ Hash, MGF, SaltLen uint64 }

// OAEPParams is CK_RSA_PKCS_OAEP_PARAMS; Label is pSourceData (nil when NULL).
type OAEPParams struct {
	Hash, MGF, Source uint64
	Label             []byte
}

// Mechanism types named in this file.
const (
	ckmRSAPKCSOAEP = 0x09
	ckmRSAPKCSPSS  = 0x0d
)

// paramShapes are the mechanisms p11-kit knows how to carry with a parameter (rpc-message.c's
// p11_rpc_mechanism_serializers), each with its parameter encoding spelt q = uint64, a = byte array,
// y = byte. p11-kit 0.24 knows only CKM_RSA_PKCS_PSS and CKM_RSA_PKCS_OAEP; the others came with 0.25.0.
// Only the PSS and OAEP shapes are decoded into fields; the others are walked so that the rest of the
// request still parses.
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
	// CK_MAC_GENERAL_PARAMS, one CK_ULONG: SHA_1, SHA256, SHA224, SHA384, SHA512, SHA512_224, SHA512_256
	// _HMAC_GENERAL, AES_MAC_GENERAL, AES_CMAC_GENERAL, DES3_MAC_GENERAL, DES3_CMAC_GENERAL.
	0x222: "q", 0x252: "q", 0x257: "q", 0x262: "q", 0x272: "q", 0x4a: "q", 0x4e: "q",
	0x1084: "q", 0x108b: "q", 0x135: "q", 0x137: "q",
	// An IV or public value as a byte array: AES_CBC, AES_CBC_PAD, AES_OFB, AES_CFB1/8/64/128, AES_CTS,
	// DES_CBC, DES_CBC_PAD, DES3_CBC, DES3_CBC_PAD, DES_CFB8, DES_CFB64, DES_OFB64, DH_PKCS_DERIVE.
	0x1082: "a", 0x1085: "a", 0x2104: "a", 0x2108: "a", 0x2106: "a", 0x2105: "a", 0x2107: "a", 0x1089: "a",
	0x122: "a", 0x125: "a", 0x133: "a", 0x136: "a", 0x153: "a", 0x152: "a", 0x150: "a", 0x21: "a",
}

// noParamMechs are the mechanisms p11-kit carries without a parameter (rpc-message.c's
// mechanism_has_no_parameters); true marks the ones added in 0.25.0. In the version 2 encoding nothing
// follows their type; before it, a NULL byte array did.
var noParamMechs = map[uint64]bool{
	0x0:        false, // RSA_PKCS_KEY_PAIR_GEN
	0x1:        false, // RSA_PKCS
	0x2:        false, // RSA_9796
	0x3:        false, // RSA_X_509
	0x4:        false, // MD2_RSA_PKCS
	0x5:        false, // MD5_RSA_PKCS
	0x6:        false, // SHA1_RSA_PKCS
	0x7:        false, // RIPEMD128_RSA_PKCS
	0x8:        false, // RIPEMD160_RSA_PKCS
	0xa:        false, // RSA_X9_31_KEY_PAIR_GEN
	0xb:        false, // RSA_X9_31
	0xc:        false, // SHA1_RSA_X9_31
	0x10:       false, // DSA_KEY_PAIR_GEN
	0x11:       false, // DSA
	0x12:       false, // DSA_SHA1
	0x20:       false, // DH_PKCS_KEY_PAIR_GEN
	0x30:       false, // X9_42_DH_KEY_PAIR_GEN
	0x40:       false, // SHA256_RSA_PKCS
	0x41:       false, // SHA384_RSA_PKCS
	0x42:       false, // SHA512_RSA_PKCS
	0x46:       true,  // SHA224_RSA_PKCS
	0x48:       true,  // SHA512_224
	0x49:       true,  // SHA512_224_HMAC
	0x4b:       true,  // SHA512_224_KEY_DERIVATION
	0x4c:       true,  // SHA512_256
	0x4d:       true,  // SHA512_256_HMAC
	0x4f:       true,  // SHA512_256_KEY_DERIVATION
	0x50:       true,  // SHA512_T
	0x51:       true,  // SHA512_T_HMAC
	0x53:       true,  // SHA512_T_KEY_DERIVATION
	0x100:      false, // RC2_KEY_GEN
	0x101:      false, // RC2_ECB
	0x103:      false, // RC2_MAC
	0x110:      false, // RC4_KEY_GEN
	0x111:      false, // RC4
	0x120:      false, // DES_KEY_GEN
	0x121:      false, // DES_ECB
	0x123:      false, // DES_MAC
	0x130:      false, // DES2_KEY_GEN
	0x131:      false, // DES3_KEY_GEN
	0x132:      false, // DES3_ECB
	0x134:      false, // DES3_MAC
	0x138:      true,  // DES3_CMAC
	0x140:      false, // CDMF_KEY_GEN
	0x141:      false, // CDMF_ECB
	0x143:      false, // CDMF_MAC
	0x200:      false, // MD2
	0x201:      false, // MD2_HMAC
	0x210:      false, // MD5
	0x211:      false, // MD5_HMAC
	0x220:      false, // SHA_1
	0x221:      false, // SHA_1_HMAC
	0x230:      false, // RIPEMD128
	0x231:      false, // RIPEMD128_HMAC
	0x240:      false, // RIPEMD160
	0x241:      false, // RIPEMD160_HMAC
	0x250:      false, // SHA256
	0x251:      false, // SHA256_HMAC
	0x255:      true,  // SHA224
	0x256:      true,  // SHA224_HMAC
	0x260:      false, // SHA384
	0x261:      false, // SHA384_HMAC
	0x270:      false, // SHA512
	0x271:      false, // SHA512_HMAC
	0x300:      false, // CAST_KEY_GEN
	0x301:      false, // CAST_ECB
	0x303:      false, // CAST_MAC
	0x310:      false, // CAST3_KEY_GEN
	0x311:      false, // CAST3_ECB
	0x313:      false, // CAST3_MAC
	0x320:      false, // CAST128_KEY_GEN
	0x321:      false, // CAST128_ECB
	0x330:      false, // RC5_KEY_GEN
	0x331:      false, // RC5_ECB
	0x333:      false, // RC5_MAC
	0x340:      false, // IDEA_KEY_GEN
	0x341:      false, // IDEA_ECB
	0x343:      false, // IDEA_MAC
	0x350:      false, // GENERIC_SECRET_KEY_GEN
	0x370:      false, // SSL3_PRE_MASTER_KEY_GEN
	0x374:      false, // TLS_PRE_MASTER_KEY_GEN
	0x380:      false, // SSL3_MD5_MAC
	0x381:      false, // SSL3_SHA1_MAC
	0x392:      true,  // SHA1_KEY_DERIVATION
	0x393:      true,  // SHA256_KEY_DERIVATION
	0x394:      true,  // SHA384_KEY_DERIVATION
	0x395:      true,  // SHA512_KEY_DERIVATION
	0x396:      true,  // SHA224_KEY_DERIVATION
	0x400:      false, // KEY_WRAP_LYNKS
	0x1000:     false, // SKIPJACK_KEY_GEN
	0x1008:     false, // SKIPJACK_WRAP
	0x1010:     false, // KEA_KEY_PAIR_GEN
	0x1020:     false, // FORTEZZA_TIMESTAMP
	0x1030:     false, // BATON_KEY_GEN
	0x1036:     false, // BATON_WRAP
	0x1040:     false, // EC_KEY_PAIR_GEN
	0x1041:     false, // ECDSA
	0x1042:     false, // ECDSA_SHA1
	0x1043:     true,  // ECDSA_SHA224
	0x1044:     true,  // ECDSA_SHA256
	0x1045:     true,  // ECDSA_SHA384
	0x1046:     true,  // ECDSA_SHA512
	0x1060:     false, // JUNIPER_KEY_GEN
	0x1065:     false, // JUNIPER_WRAP
	0x1070:     false, // FASTHASH
	0x1080:     false, // AES_KEY_GEN
	0x1081:     false, // AES_ECB
	0x1083:     false, // AES_MAC
	0x108a:     true,  // AES_CMAC
	0x2000:     false, // DSA_PARAMETER_GEN
	0x2001:     false, // DH_PKCS_PARAMETER_GEN
	0x2002:     false, // X9_42_DH_PARAMETER_GEN
	0x80010001: true,  // IBM_SHA3_224
	0x80010002: true,  // IBM_SHA3_256
	0x80010003: true,  // IBM_SHA3_384
	0x80010004: true,  // IBM_SHA3_512
	0x80010007: true,  // IBM_CMAC
	0x8001001c: true,  // IBM_ED25519_SHA512
	0x8001001f: true,  // IBM_ED448_SHA3
	0x80010023: true,  // IBM_DILITHIUM
	0x80010025: true,  // IBM_SHA3_224_HMAC
	0x80010026: true,  // IBM_SHA3_256_HMAC
	0x80010027: true,  // IBM_SHA3_384_HMAC
	0x80010028: true,  // IBM_SHA3_512_HMAC
}

// Parameterless reports whether p11-kit carries mech without a parameter (rpc-message.c
// mechanism_has_no_parameters, the 0.25+ list; 0.24's is a subset): in the version 2 encoding nothing follows
// its type.
func Parameterless(mech uint64) bool {
	_, ok := noParamMechs[mech]
	return ok
}

// Carried reports whether the stock p11-kit client of a connection speaking version passes mechanism
// mech through at all. It drops every other mechanism from C_GetMechanismList answers and refuses it in
// C_*Init with CKR_MECHANISM_INVALID before anything is sent (rpc-client.c mechanism_list_purge), so
// advertising it is pointless: CKM_EDDSA and the SHA-2 RSA-PSS and ECDSA hash-and-sign mechanisms, for
// instance, are lost on a version 0 (p11-kit 0.24) client.
func Carried(mech uint64, version byte) bool {
	if since1, ok := noParamMechs[mech]; ok {
		return !since1 || version >= 1
	}
	if _, ok := paramShapes[mech]; ok {
		return version >= 1 || mech == ckmRSAPKCSPSS || mech == ckmRSAPKCSOAEP
	}
	return false
}

// mechNull is the mechanism type p11-kit 0.25.3+ sends for a NULL CK_MECHANISM_PTR (an Init call that
// cancels the operation); nothing follows it.
const mechNull = 0xffffffff

// mechanism reads an 'M': the type as a uint32, then the parameter. v2 selects the encoding of p11-kit
// 0.25.6+: nothing for a mechanism of noParamMechs, otherwise a has-parameter byte and, when 1, the
// parameter. Otherwise the encoding of earlier versions: the parameter directly (a byte array, NULL when
// absent, or the structured encoding of paramShapes). A nil result is the NULL mechanism (type 0xffffffff,
// nothing after it; 0.25.3+).
func (d *decoder) mechanism(v2 bool) (*Mechanism, error) {
	t, err := d.u32("mechanism type")
	if err != nil {
		return nil, err
	}
	if t == mechNull {
		return nil, nil
	}
	m := &Mechanism{Type: uint64(t)}
	if _, ok := noParamMechs[m.Type]; ok && v2 {
		return m, nil
	}
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
	shape, ok := paramShapes[m.Type]
	if !ok || shape == "a" {
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
