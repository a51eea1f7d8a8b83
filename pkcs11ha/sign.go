package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// signPlan is a validated signing request: mechanism, input bytes and how to post-process the output.
type signPlan struct {
	mech   devicebackend.MechSpec
	input  []byte
	ecdsa  int // >0: convert raw r||s of this coordinate length to DER
	salt   int // RSA-PSS: the salt length asked of the token (verifySignature checks with it)
	outLen int // the signature's size, known from the key: one C_Sign call
}

// op is the plan as a device operation on key k.
func (p *signPlan) op(k *keyEntry) *devicebackend.Op {
	return &devicebackend.Op{Kind: devicebackend.KindSign, Label: k.label, PubDER: k.pubDER, Mech: p.mech, Input: p.input, OutLen: p.outLen}
}

// check returns the verify-after-sign check of a signature by the key, when the policy covers the key:
// run inside the attempt, so a bad signature fails the attempt (and the call moves on) instead of reaching
// the caller. nil when the policy does not check this key.
func (k *Key) check(plan *signPlan, digest []byte, opts crypto.SignerOpts) func([]byte) error {
	pub := k.entry.pub
	if !verifies(k.cl.s.own.VerifySignatures, pub) {
		return nil
	}
	return func(sig []byte) error {
		if scheme, ok := verifySignature(pub, digest, opts, plan, sig); !ok {
			return &SignatureError{Partition: k.part, Key: k.entry.label, Scheme: scheme}
		}
		return nil
	}
}

// healthHash signs the health key's probe digest: SHA-256 for RSA/ECDSA keys.
type healthHash struct{}

func (healthHash) HashFunc() crypto.Hash { return crypto.SHA256 }

var hashMech = map[crypto.Hash]struct{ mech, mgf uint }{
	crypto.SHA1:   {pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1},
	crypto.SHA224: {pkcs11.CKM_SHA224, pkcs11.CKG_MGF1_SHA224},
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512},
}

// DigestInfo prefixes for PKCS#1 v1.5 signatures (RFC 8017 §9.2 note 1).
var digestInfo = map[crypto.Hash][]byte{
	crypto.SHA224: {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// planSign validates the request against the key before any HSM call and picks the mechanism.
func planSign(pub crypto.PublicKey, digest []byte, opts crypto.SignerOpts) (*signPlan, error) {
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return planPSS(pk, digest, pss)
		}
		return planPKCS1(pk, digest, opts.HashFunc())
	case *ecdsa.PublicKey:
		return planECDSA(pk, digest, opts)
	case ed25519.PublicKey:
		if eo, ok := opts.(*ed25519.Options); ok && (eo.Hash != 0 || eo.Context != "") {
			return nil, errclass.InputErr("sign: only pure Ed25519 is supported (no Ed25519ph, no context)")
		}
		if opts.HashFunc() != 0 {
			return nil, errclass.InputErr("sign: Ed25519 signs the message itself: use crypto.Hash(0)")
		}
		return &signPlan{mech: devicebackend.MechSpec{Type: devicebackend.CKMEdDSA}, input: digest, outLen: ed25519.SignatureSize}, nil
	}
	return nil, errclass.InputErr("sign: unsupported public key type %T", pub)
}

// checkDigest checks that digest is a digest of h (any input when h is 0).
func checkDigest(h crypto.Hash, digest []byte) error {
	if h == 0 {
		return nil
	}
	if !h.Available() && hashMech[h].mech == 0 {
		return errclass.InputErr("sign: hash %v not supported", h)
	}
	if len(digest) != h.Size() {
		return errclass.InputErr("sign: digest has %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	return nil
}

// planPSS: RSA-PSS with the salt length crypto/rsa would use (Auto = the largest that fits).
func planPSS(pk *rsa.PublicKey, digest []byte, pss *rsa.PSSOptions) (*signPlan, error) {
	h := pss.HashFunc()
	if h == 0 {
		return nil, errclass.InputErr("sign: RSA-PSS needs a hash")
	}
	hm, ok := hashMech[h]
	if !ok {
		return nil, errclass.InputErr("sign: RSA-PSS with %v not supported", h)
	}
	if err := checkDigest(h, digest); err != nil {
		return nil, err
	}
	emLen := (pk.N.BitLen() - 1 + 7) / 8
	maxSalt := emLen - h.Size() - 2
	salt := pss.SaltLength
	switch {
	case salt == rsa.PSSSaltLengthAuto:
		salt = maxSalt
	case salt == rsa.PSSSaltLengthEqualsHash:
		salt = h.Size()
	case salt < 0:
		return nil, errclass.InputErr("sign: invalid PSS salt length %d", salt)
	}
	if salt > maxSalt || maxSalt < 0 {
		return nil, errclass.InputErr("sign: PSS salt length %d too large for this key (max %d)", salt, maxSalt)
	}
	return &signPlan{mech: devicebackend.MechSpec{Type: pkcs11.CKM_RSA_PKCS_PSS, PSSHash: hm.mech, PSSMGF: hm.mgf, PSSSalt: uint(salt)},
		input: digest, salt: salt, outLen: pk.Size()}, nil
}

// planPKCS1: RSA PKCS#1 v1.5 over the DigestInfo of digest, or over a raw input when h is 0.
func planPKCS1(pk *rsa.PublicKey, digest []byte, h crypto.Hash) (*signPlan, error) {
	if h == 0 {
		if len(digest) == 0 || len(digest) > pk.Size()-11 {
			return nil, errclass.InputErr("sign: raw input of %d bytes does not fit the key", len(digest))
		}
		return &signPlan{mech: devicebackend.MechSpec{Type: pkcs11.CKM_RSA_PKCS}, input: digest, outLen: pk.Size()}, nil
	}
	prefix, ok := digestInfo[h]
	if !ok {
		return nil, errclass.InputErr("sign: RSA PKCS#1 v1.5 with %v not supported", h)
	}
	if err := checkDigest(h, digest); err != nil {
		return nil, err
	}
	in := append(append(make([]byte, 0, len(prefix)+len(digest)), prefix...), digest...)
	return &signPlan{mech: devicebackend.MechSpec{Type: pkcs11.CKM_RSA_PKCS}, input: in, outLen: pk.Size()}, nil
}

// planECDSA: CKM_ECDSA over the digest; the token's raw r||s is converted to DER afterwards.
func planECDSA(pk *ecdsa.PublicKey, digest []byte, opts crypto.SignerOpts) (*signPlan, error) {
	if _, ok := opts.(*rsa.PSSOptions); ok {
		return nil, errclass.InputErr("sign: RSA-PSS options for an ECDSA key")
	}
	if h := opts.HashFunc(); h == 0 {
		if len(digest) == 0 || len(digest) > 64 {
			return nil, errclass.InputErr("sign: ECDSA input of %d bytes", len(digest))
		}
	} else if err := checkDigest(h, digest); err != nil {
		return nil, err
	}
	n := (pk.Curve.Params().BitSize + 7) / 8
	return &signPlan{mech: devicebackend.MechSpec{Type: pkcs11.CKM_ECDSA}, input: digest, ecdsa: n, outLen: 2 * n}, nil
}

// ecdsaDER converts the PKCS#11 raw r||s signature into ASN.1 DER. It writes the DER directly (one
// allocation, ~0.2 µs) rather than through encoding/asn1 and math/big (~20 allocations, 2–3 µs, ~2% of an
// in-process ECDSA P-256 signature); the output is byte-for-byte what asn1.Marshal gives.
func ecdsaDER(raw []byte, coordLen int) ([]byte, error) {
	if len(raw)%2 != 0 || len(raw) != 2*coordLen {
		return nil, fmt.Errorf("pkcs11ha: ECDSA signature of %d bytes from the token (want %d)", len(raw), 2*coordLen)
	}
	if coordLen > 66 { // beyond P-521 the SEQUENCE may need a longer length form: the general encoder
		r := new(big.Int).SetBytes(raw[:coordLen])
		s := new(big.Int).SetBytes(raw[coordLen:])
		return asn1.Marshal(struct{ R, S *big.Int }{r, s})
	}
	r, s := derTrim(raw[:coordLen]), derTrim(raw[coordLen:])
	body := derIntLen(r) + derIntLen(s) // at most 2*(2+67) = 138
	out := make([]byte, 0, 3+body)
	if body < 0x80 {
		out = append(out, 0x30, byte(body))
	} else {
		out = append(out, 0x30, 0x81, byte(body))
	}
	return derAppendInt(derAppendInt(out, r), s), nil
}

// derTrim drops the leading zero octets of an unsigned big-endian integer.
func derTrim(b []byte) []byte {
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	return b
}

// derPad reports whether the DER INTEGER of the trimmed unsigned value b needs a leading 0x00 (zero, or
// the top bit set).
func derPad(b []byte) bool { return len(b) == 0 || b[0]&0x80 != 0 }

// derIntLen is the encoded length (tag, length, content) of the INTEGER for the trimmed value b.
func derIntLen(b []byte) int {
	if derPad(b) {
		return 3 + len(b)
	}
	return 2 + len(b)
}

func derAppendInt(out, b []byte) []byte {
	if derPad(b) {
		out = append(out, 0x02, byte(len(b)+1), 0)
	} else {
		out = append(out, 0x02, byte(len(b)))
	}
	return append(out, b...)
}
