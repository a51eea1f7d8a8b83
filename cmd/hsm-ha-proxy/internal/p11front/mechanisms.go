package p11front

import (
	"crypto"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// mechKind is what a mechanism does with its input.
type mechKind int

const (
	kindRSAPKCS mechKind = iota + 1 // PKCS#1 v1.5: sign/verify (raw DigestInfo or hash-and-sign), encrypt/decrypt
	kindPSS                         // RSA-PSS sign/verify
	kindOAEP                        // RSA-OAEP encrypt/decrypt
	kindECDSA                       // ECDSA sign/verify, raw r||s signatures
	kindDigest                      // C_Digest*
)

// mech is one mechanism the front end implements.
type mech struct {
	typ     uint64
	name    string
	kind    mechKind
	hash    crypto.Hash // hash-and-sign and digest mechanisms: the hash done in the sidecar; 0 for raw forms
	keyType uint64      // CKK_RSA or CKK_EC; 0 for digests
	flags   uint64
	minBits uint64
	maxBits uint64
}

// CKF_HW marks the mechanisms whose private-key half runs on the HSMs (tools such as pkcs11-tool --test
// look for it); verify, encrypt and digest are done in software.
const (
	fSignVerify = pkcs11.CKF_HW | pkcs11.CKF_SIGN | pkcs11.CKF_VERIFY
	fCrypt      = pkcs11.CKF_HW | pkcs11.CKF_ENCRYPT | pkcs11.CKF_DECRYPT
	fEC         = pkcs11.CKF_EC_F_P | pkcs11.CKF_EC_NAMEDCURVE | pkcs11.CKF_EC_UNCOMPRESS
)

// mechanisms in the order C_GetMechanismList gives them: the raw forms first, because p11-kit 0.24's
// client silently drops the mechanisms it cannot carry (CKM_ECDSA_SHA*, the SHA*_RSA_PKCS_PSS forms,
// SHA-224) from the list it passes on, and an application must find the raw forms whatever it drops.
var mechanisms = []mech{
	{pkcs11.CKM_RSA_PKCS, "CKM_RSA_PKCS", kindRSAPKCS, 0, pkcs11.CKK_RSA, fSignVerify | fCrypt, 1024, 16384},
	{pkcs11.CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", kindPSS, 0, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", kindOAEP, 0, pkcs11.CKK_RSA, fCrypt, 1024, 16384},
	{pkcs11.CKM_ECDSA, "CKM_ECDSA", kindECDSA, 0, pkcs11.CKK_EC, fSignVerify | fEC, 256, 521},
	{pkcs11.CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS", kindRSAPKCS, crypto.SHA256, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS", kindRSAPKCS, crypto.SHA384, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS", kindRSAPKCS, crypto.SHA512, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS", kindPSS, crypto.SHA256, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS", kindPSS, crypto.SHA384, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS", kindPSS, crypto.SHA512, pkcs11.CKK_RSA, fSignVerify, 1024, 16384},
	{pkcs11.CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256", kindECDSA, crypto.SHA256, pkcs11.CKK_EC, fSignVerify | fEC, 256, 521},
	{pkcs11.CKM_ECDSA_SHA384, "CKM_ECDSA_SHA384", kindECDSA, crypto.SHA384, pkcs11.CKK_EC, fSignVerify | fEC, 256, 521},
	{pkcs11.CKM_ECDSA_SHA512, "CKM_ECDSA_SHA512", kindECDSA, crypto.SHA512, pkcs11.CKK_EC, fSignVerify | fEC, 256, 521},
	{pkcs11.CKM_SHA_1, "CKM_SHA_1", kindDigest, crypto.SHA1, 0, pkcs11.CKF_DIGEST, 0, 0},
	{pkcs11.CKM_SHA224, "CKM_SHA224", kindDigest, crypto.SHA224, 0, pkcs11.CKF_DIGEST, 0, 0},
	{pkcs11.CKM_SHA256, "CKM_SHA256", kindDigest, crypto.SHA256, 0, pkcs11.CKF_DIGEST, 0, 0},
	{pkcs11.CKM_SHA384, "CKM_SHA384", kindDigest, crypto.SHA384, 0, pkcs11.CKF_DIGEST, 0, 0},
	{pkcs11.CKM_SHA512, "CKM_SHA512", kindDigest, crypto.SHA512, 0, pkcs11.CKF_DIGEST, 0, 0},
}

var mechByType = func() map[uint64]*mech {
	m := make(map[uint64]*mech, len(mechanisms)+len(secretMechanisms))
	for i := range mechanisms {
		m[mechanisms[i].typ] = &mechanisms[i]
	}
	for i := range secretMechanisms {
		m[secretMechanisms[i].typ] = &secretMechanisms[i]
	}
	return m
}()

// mechNamed returns the mechanism of type t when it can do what flag says (CKF_SIGN, CKF_DECRYPT, ...):
// CKR_MECHANISM_INVALID otherwise.
func mechNamed(t, flag uint64) (*mech, error) {
	m := mechByType[t]
	if m == nil || m.flags&flag == 0 {
		return nil, rvErr(pkcs11.CKR_MECHANISM_INVALID, "mechanism not supported for this operation")
	}
	return m, nil
}

// mechLabel names a mechanism for metrics and logs; unknown types are "other" (bounded label values).
func mechLabel(t uint64) string {
	if m := mechByType[t]; m != nil {
		return m.name
	}
	return "other"
}

func (c *conn) cGetMechanismList(req *p11rpc.Request, w *p11rpc.Reply) error {
	slot := req.Ulong()
	n, null := req.UlongBuffer()
	if err := req.Finish(); err != nil {
		return err
	}
	part, err := c.slot(slot)
	if err != nil {
		return err
	}
	list := make([]uint64, len(mechanisms), len(mechanisms)+len(secretMechanisms))
	for i, m := range mechanisms {
		list[i] = m.typ
	}
	for _, m := range c.secretMechsOf(part) {
		list = append(list, m.typ)
	}
	for _, m := range c.keygenMechsFor() {
		list = append(list, m.typ)
	}
	writeUlongs(w, list, n, null)
	return nil
}

func (c *conn) cGetMechanismInfo(req *p11rpc.Request, w *p11rpc.Reply) error {
	slot, t := req.Ulong(), req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	part, err := c.slot(slot)
	if err != nil {
		return err
	}
	m := c.tokenMech(part, t)
	if m == nil {
		m = c.keygenMech(t)
	}
	if m == nil {
		return rvErr(pkcs11.CKR_MECHANISM_INVALID, "unknown mechanism")
	}
	w.Ulong(m.minBits)
	w.Ulong(m.maxBits)
	w.Ulong(m.flags)
	return nil
}
