package devicebackend

import (
	"crypto"
	"crypto/rsa"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall"
)

// A device operation is plain data — what to do with which key, never a closure — so that the same
// request runs on an in-process device or is carried to a device worker process (worker.go) unchanged.

// OpKind is what a Op does on the token.
type OpKind uint8

const (
	KindSign       OpKind = iota + 1 // C_SignInit + C_Sign with the private key
	KindDecrypt                      // C_DecryptInit + C_Decrypt with the private key
	KindSeal                         // AES-GCM encryption with a secret key (secretops.go)
	KindOpen                         // AES-GCM decryption with a secret key
	KindMAC                          // HMAC (C_SignInit + C_Sign) with a secret key
	KindCBCEncrypt                   // AES-CBC with PKCS#7 padding (CKM_AES_CBC_PAD), encryption (secretcbcop.go)
	KindCBCDecrypt                   // AES-CBC-PAD decryption
)

// secret reports whether the operation uses a secret key (CKO_SECRET_KEY) rather than a private key.
func (k OpKind) secret() bool { return k >= KindSeal && k <= KindCBCDecrypt }

// MechSpec is a PKCS#11 mechanism with its parameters as values.
type MechSpec struct {
	Type uint
	// RSA-PSS (CKM_RSA_PKCS_PSS): hash mechanism, MGF, salt length.
	PSSHash, PSSMGF, PSSSalt uint
	// RSA-OAEP (CKM_RSA_PKCS_OAEP): hash mechanism, MGF, and the label when one is given.
	OAEPHash, OAEPMGF uint
	OAEPLabel         []byte
	// AES-GCM (CKM_AES_GCM): the 96-bit nonce, the additional authenticated data and the tag size in bits.
	GCMIV, GCMAAD []byte
	GCMTagBits    uint
	// AES-CBC-PAD (CKM_AES_CBC_PAD): the 16-byte IV, the mechanism's parameter.
	CBCIV []byte
}

// Mechanisms without parameters are shared: miekg/pkcs11 only reads them.
var plainMechs = map[uint][]*pkcs11.Mechanism{
	pkcs11.CKM_RSA_PKCS:    {pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)},
	pkcs11.CKM_ECDSA:       {pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)},
	CKMEdDSA:               {pkcs11.NewMechanism(CKMEdDSA, nil)},
	pkcs11.CKM_RSA_X_509:   {pkcs11.NewMechanism(pkcs11.CKM_RSA_X_509, nil)},
	pkcs11.CKM_AES_ECB:     {pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)},
	pkcs11.CKM_SHA256_HMAC: {pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)},
	pkcs11.CKM_SHA384_HMAC: {pkcs11.NewMechanism(pkcs11.CKM_SHA384_HMAC, nil)},
	pkcs11.CKM_SHA512_HMAC: {pkcs11.NewMechanism(pkcs11.CKM_SHA512_HMAC, nil)},
}

// p11 returns the mechanism in miekg/pkcs11's form.
func (m *MechSpec) p11() []*pkcs11.Mechanism {
	switch m.Type {
	case pkcs11.CKM_RSA_PKCS_PSS:
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Type, pkcs11.NewPSSParams(m.PSSHash, m.PSSMGF, m.PSSSalt))}
	case pkcs11.CKM_RSA_PKCS_OAEP:
		var src uint
		if len(m.OAEPLabel) > 0 {
			src = pkcs11.CKZ_DATA_SPECIFIED
		}
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Type, pkcs11.NewOAEPParams(m.OAEPHash, m.OAEPMGF, src, m.OAEPLabel))}
	}
	if ms, ok := plainMechs[m.Type]; ok {
		return ms
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Type, nil)}
}

// Op is one operation on one key of one partition.
type Op struct {
	Kind OpKind
	// Label and PubDER name the key: a handle found stale is looked up again by label and must still have
	// this public key (SubjectPublicKeyInfo DER) — for a secret key, this key check value (secretkeys.go).
	Label  string
	PubDER []byte
	Mech   MechSpec
	Input  []byte
	// OutLen is the output size when it is known from the key (RSA: modulus bytes; ECDSA: twice the field
	// size; Ed25519: 64): the operation is then one C_Sign/C_Decrypt call into a buffer of that size.
	OutLen int
	// OAEP decryption in Go after raw RSA on the token, when the token lacks the OAEP parameters
	// (policy.oaep_fallback): the hashes and label, and the key's modulus size.
	OAEPFallback bool
	OAEPHash     crypto.Hash
	OAEPMGFHash  crypto.Hash
	KeySize      int
	// GCMFallback: AES-GCM built in Go from AES-ECB blocks the token encrypts, when the token or its
	// transport refuses CKM_AES_GCM parameters (policy.gcm_fallback; secretops.go).
	GCMFallback bool
	// CBCFallback: AES-CBC-PAD built in Go from AES-ECB on the token, when the token or its transport
	// refuses CKM_AES_CBC_PAD (policy.cbc_fallback; secretcbcop.go).
	CBCFallback bool
}

// exec runs the operation on session s with key handle h; it returns the output and the PKCS#11 function
// that failed, for the error table.
func (op *Op) exec(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, string, error) {
	switch op.Kind {
	case KindSign:
		if err := c.SignInit(s, op.Mech.p11(), h); err != nil {
			return nil, errclass.OpSignInit, err
		}
		out, err := oneCall(c, s, op.Input, op.OutLen, onecall.Sign, c.Sign)
		return out, errclass.OpSign, err
	case KindDecrypt:
		return op.decrypt(c, s, h)
	case KindSeal, KindOpen:
		return op.gcm(c, s, h)
	case KindCBCEncrypt, KindCBCDecrypt:
		return op.cbc(c, s, h)
	case KindMAC:
		if err := c.SignInit(s, op.Mech.p11(), h); err != nil {
			return nil, errclass.OpSignInit, err
		}
		out, err := oneCall(c, s, op.Input, op.OutLen, onecall.Sign, c.Sign)
		return out, errclass.OpSign, err
	}
	return nil, errclass.OpSign, errclass.InputErr("unknown operation %d", op.Kind)
}

// oneCall runs a single-part call into a buffer of size n (one round trip); when n is unknown or too
// small it takes miekg/pkcs11's path, which asks for the size first.
func oneCall(c *pkcs11.Ctx, s pkcs11.SessionHandle, in []byte, n int,
	once func(*pkcs11.Ctx, pkcs11.SessionHandle, []byte, []byte) (int, error),
	twice func(pkcs11.SessionHandle, []byte) ([]byte, error)) ([]byte, error) {
	if n > 0 {
		out := make([]byte, n)
		got, err := once(c, s, in, out)
		if err == nil {
			return out[:got], nil
		}
		if !onecall.TooSmall(err) {
			return nil, err
		}
	}
	return twice(s, in)
}

// oaepOptions is the fallback's OAEP parameters in crypto/rsa's form.
func (op *Op) oaepOptions() *rsa.OAEPOptions {
	if op.Mech.Type != pkcs11.CKM_RSA_PKCS_OAEP {
		return nil
	}
	return &rsa.OAEPOptions{Hash: op.OAEPHash, MGFHash: op.OAEPMGFHash, Label: op.Mech.OAEPLabel}
}
