package p11front

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// maxRawInput bounds the input of a raw (not hash-and-sign) signature mechanism gathered over
// C_SignUpdate/C_VerifyUpdate: it is a digest or a DigestInfo, never more than a few hundred bytes.
const maxRawInput = 4096

// sigPlan is the plan of a signature operation (sign or verify): the mechanism's key type, the
// signature's length, the digest's hash and PSS's parameters. Hash-and-sign mechanisms hash their input as
// it comes, in the sidecar, and sign the digest; raw ones gather it, bounded.
func sigPlan(m *mech, mp *p11rpc.Mechanism, o *object) (*opPlan, error) {
	p := &opPlan{mech: m, obj: o, maxInput: maxRawInput, sigHash: m.hash}
	switch pk := o.pub.(type) {
	case *rsa.PublicKey:
		if m.keyType != pkcs11.CKK_RSA {
			return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, "an RSA key for "+m.name)
		}
		p.outLen = pk.Size()
		if m.kind == kindPSS {
			if err := p.setPSS(mp, pk); err != nil {
				return nil, err
			}
		}
	case *ecdsa.PublicKey:
		if m.keyType != pkcs11.CKK_EC {
			return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, "an EC key for "+m.name)
		}
		p.outLen = 2 * coordLen(pk)
	default:
		return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, "unsupported key type")
	}
	return p, nil
}

// errPSSSaltZero refuses RSA-PSS with a salt length of 0 (deterministic PSS): the cluster signs through
// crypto.Signer, whose rsa.PSSOptions reads SaltLength 0 as "auto" (the largest salt when signing), so what
// was asked cannot be expressed; and verifying with 0 would accept any salt length. The caller logs it.
var errPSSSaltZero = &rvError{rv: pkcs11.CKR_MECHANISM_PARAM_INVALID, msg: "RSA-PSS with a salt length of 0"}

// warnPSSZero logs a C_SignInit or C_VerifyInit (call) refused for a zero PSS salt: the application gets
// only CKR_MECHANISM_PARAM_INVALID, the operator should learn why.
func (c *conn) warnPSSZero(call string, err error, o *object, m *mech) {
	if errors.Is(err, errPSSSaltZero) {
		c.log.Warn("PKCS#11 "+call+" refused with CKR_MECHANISM_PARAM_INVALID: RSA-PSS with a salt length of 0 is not supported "+
			"(the cluster signs through Go's crypto/rsa, which reads 0 as \"auto\"); use a salt length of at least 1, usually the hash length",
			"client", c.clientName(), "key", o.label, "mechanism", m.name)
	}
}

// setPSS reads CK_RSA_PKCS_PSS_PARAMS: the digest's hash (for the hash-and-sign forms, the mechanism's
// own), MGF1 with that same hash (what the cluster's tokens are asked for) and a salt length from 1 to the
// largest the key allows (0: errPSSSaltZero).
func (p *opPlan) setPSS(mp *p11rpc.Mechanism, pk *rsa.PublicKey) error {
	if mp.PSS == nil {
		return rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-PSS needs CK_RSA_PKCS_PSS_PARAMS")
	}
	h, ok := hashOfMech[mp.PSS.Hash]
	if !ok || (p.mech.hash != 0 && h != p.mech.hash) {
		return rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-PSS hash parameter")
	}
	if mgf, ok := hashOfMGF[mp.PSS.MGF]; !ok || mgf != h {
		return rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-PSS MGF must be MGF1 with the same hash")
	}
	maxSalt := (pk.N.BitLen()-1+7)/8 - h.Size() - 2
	if mp.PSS.SaltLen == 0 {
		return errPSSSaltZero
	}
	if mp.PSS.SaltLen > uint64(max(maxSalt, 0)) {
		return rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "RSA-PSS salt length")
	}
	p.sigHash = h
	p.pss = &rsa.PSSOptions{SaltLength: int(mp.PSS.SaltLen), Hash: h}
	return nil
}

// signerOpts are the options of the cluster's Sign: PSS options, the hash of a hash-and-sign mechanism,
// or crypto.Hash(0) for a raw input (a DigestInfo for CKM_RSA_PKCS, which the cluster signs as it is).
func (p *opPlan) signerOpts() crypto.SignerOpts {
	if p.pss != nil {
		return p.pss
	}
	return p.sigHash
}

// hashOfMech maps CKM_SHA* (the hash parameter of PSS and OAEP) to crypto.Hash.
var hashOfMech = map[uint64]crypto.Hash{
	pkcs11.CKM_SHA_1: crypto.SHA1, pkcs11.CKM_SHA224: crypto.SHA224, pkcs11.CKM_SHA256: crypto.SHA256,
	pkcs11.CKM_SHA384: crypto.SHA384, pkcs11.CKM_SHA512: crypto.SHA512,
}

// hashOfMGF maps CKG_MGF1_SHA* to crypto.Hash.
var hashOfMGF = map[uint64]crypto.Hash{
	pkcs11.CKG_MGF1_SHA1: crypto.SHA1, pkcs11.CKG_MGF1_SHA224: crypto.SHA224, pkcs11.CKG_MGF1_SHA256: crypto.SHA256,
	pkcs11.CKG_MGF1_SHA384: crypto.SHA384, pkcs11.CKG_MGF1_SHA512: crypto.SHA512,
}

// coordLen is the length of one coordinate (and of r and s) on the key's curve.
func coordLen(pk *ecdsa.PublicKey) int { return (pk.Curve.Params().BitSize + 7) / 8 }
