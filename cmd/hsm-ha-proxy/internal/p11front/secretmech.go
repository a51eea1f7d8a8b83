package p11front

import (
	"crypto"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// The mechanisms of secret keys, all computed by the cluster (pkcs11ha.SecretKey): HMAC sign and verify,
// AES-GCM encrypt and decrypt with the client's CK_GCM_PARAMS, AES-CBC-PAD encrypt and decrypt with the
// client's IV (unauthenticated: the caveat is in docs/encryption.md). They are listed for a token only
// when it holds a key that can use them. CKM_SHA_1_HMAC and SHA-224 are not offered: the library MACs
// with SHA-256, -384 and -512 only.

const (
	kindHMAC   mechKind = iota + 100 // HMAC sign/verify with a secret key; the input is gathered, not hashed here
	kindGCM                          // AES-GCM encrypt/decrypt with a secret key
	kindCBCPad                       // AES-CBC-PAD encrypt/decrypt with a secret key
)

// secretKind reports whether mechanisms of kind k take a secret key.
func secretKind(k mechKind) bool { return k == kindHMAC || k == kindGCM || k == kindCBCPad }

// fSecretHMAC, fSecretCrypt: what the secret-key mechanisms do (on the devices: CKF_HW).
const (
	fSecretHMAC  = pkcs11.CKF_HW | pkcs11.CKF_SIGN | pkcs11.CKF_VERIFY
	fSecretCrypt = pkcs11.CKF_HW | pkcs11.CKF_ENCRYPT | pkcs11.CKF_DECRYPT
)

// secretMechanisms are listed after the key pairs' mechanisms. Key sizes are in bytes (PKCS#11 says so
// for these), as SoftHSM reports them. The hash field stays 0: the lifecycle must not hash the input in
// the sidecar (hmacHash names the HMAC's).
var secretMechanisms = []mech{
	{typ: pkcs11.CKM_SHA256_HMAC, name: "CKM_SHA256_HMAC", kind: kindHMAC, keyType: pkcs11.CKK_GENERIC_SECRET, flags: fSecretHMAC, minBits: 32, maxBits: 512},
	{typ: pkcs11.CKM_SHA384_HMAC, name: "CKM_SHA384_HMAC", kind: kindHMAC, keyType: pkcs11.CKK_GENERIC_SECRET, flags: fSecretHMAC, minBits: 48, maxBits: 512},
	{typ: pkcs11.CKM_SHA512_HMAC, name: "CKM_SHA512_HMAC", kind: kindHMAC, keyType: pkcs11.CKK_GENERIC_SECRET, flags: fSecretHMAC, minBits: 64, maxBits: 512},
	{typ: pkcs11.CKM_AES_GCM, name: "CKM_AES_GCM", kind: kindGCM, keyType: pkcs11.CKK_AES, flags: fSecretCrypt, minBits: 16, maxBits: 32},
	{typ: pkcs11.CKM_AES_CBC_PAD, name: "CKM_AES_CBC_PAD", kind: kindCBCPad, keyType: pkcs11.CKK_AES, flags: fSecretCrypt, minBits: 16, maxBits: 32},
}

// hmacHash is the hash of each HMAC mechanism, and hmacKeyType the key type that MACs with that hash only
// (a CKK_GENERIC_SECRET key MACs with any).
var (
	hmacHash = map[uint64]crypto.Hash{
		pkcs11.CKM_SHA256_HMAC: crypto.SHA256, pkcs11.CKM_SHA384_HMAC: crypto.SHA384, pkcs11.CKM_SHA512_HMAC: crypto.SHA512,
	}
	hmacKeyType = map[crypto.Hash]uint64{
		crypto.SHA256: pkcs11.CKK_SHA256_HMAC, crypto.SHA384: pkcs11.CKK_SHA384_HMAC, crypto.SHA512: pkcs11.CKK_SHA512_HMAC,
	}
)

// hmacHashOf is the hash of an HMAC key's algorithm ("HMAC_SHA384"); 0 for another algorithm.
func hmacHashOf(alg string) crypto.Hash {
	switch alg {
	case pkcs11ha.AlgHMACSHA256:
		return crypto.SHA256
	case pkcs11ha.AlgHMACSHA384:
		return crypto.SHA384
	case pkcs11ha.AlgHMACSHA512:
		return crypto.SHA512
	}
	return 0
}

// secretPlan is the plan of a secret-key mechanism (HMAC for sign and verify, AES-GCM and AES-CBC-PAD for
// encrypt and decrypt) with key o, which must be a secret key of the mechanism's type.
type secretPlan struct {
	hash    crypto.Hash       // HMAC
	gcm     *p11rpc.GCMParams // AES-GCM
	cbcIV   []byte            // AES-CBC-PAD
	decrypt bool              // AES: the direction
}

// withSecrets makes a family's plan take the secret-key mechanisms too (k says which family: the
// direction of an AES-GCM operation); a secret key with another mechanism is inconsistent.
func withSecrets(k opKind, plan func(*mech, *p11rpc.Mechanism, *object) (*opPlan, error)) func(*mech, *p11rpc.Mechanism, *object) (*opPlan, error) {
	return func(m *mech, mp *p11rpc.Mechanism, o *object) (*opPlan, error) {
		switch {
		case secretKind(m.kind):
			return planSecret(k, m, mp, o)
		case o != nil && o.class == pkcs11.CKO_SECRET_KEY:
			return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, "a secret key for "+m.name)
		}
		return plan(m, mp, o)
	}
}

func planSecret(k opKind, m *mech, mp *p11rpc.Mechanism, o *object) (*opPlan, error) {
	if o == nil || o.class != pkcs11.CKO_SECRET_KEY {
		return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, m.name+" needs a secret key")
	}
	keyType, _ := o.attrs[pkcs11.CKA_KEY_TYPE].Ulong()
	p := &opPlan{mech: m, obj: o, maxInput: pkcs11ha.MaxSecretInput}
	if m.kind == kindHMAC {
		h := hmacHash[m.typ]
		if keyType != pkcs11.CKK_GENERIC_SECRET && keyType != hmacKeyType[h] {
			return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, "this key does not MAC with "+m.name)
		}
		p.outLen, p.secret = h.Size(), &secretPlan{hash: h}
		return p, nil
	}
	if keyType != pkcs11.CKK_AES {
		return nil, rvErr(pkcs11.CKR_KEY_TYPE_INCONSISTENT, m.name+" needs an AES key")
	}
	if m.kind == kindCBCPad {
		return planCBCPad(k, p, mp)
	}
	gp, err := gcmParams(mp)
	if err != nil {
		return nil, err
	}
	tag := int(gp.TagBits / 8)
	// The output's length follows the input's: + the tag to encrypt, − the tag to decrypt.
	p.byInput, p.outLen, p.secret = true, tag, &secretPlan{gcm: gp}
	if k == opDecrypt {
		p.outLen, p.maxInput, p.secret.decrypt = -tag, pkcs11ha.MaxSecretInput+tag, true
	}
	return p, nil
}

// planCBCPad: the IV is the mechanism's parameter, one block. Encryption pads to the next whole block;
// a decryption's output is at most its input (an upper bound: the padding is known after the device
// call only).
func planCBCPad(k opKind, p *opPlan, mp *p11rpc.Mechanism) (*opPlan, error) {
	if len(mp.Param) != pkcs11ha.CBCIVSize {
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "CKM_AES_CBC_PAD needs a 16-byte IV")
	}
	p.secret = &secretPlan{cbcIV: mp.Param, decrypt: k == opDecrypt}
	if p.secret.decrypt {
		p.byInput, p.maxInput = true, pkcs11ha.MaxSecretInput+pkcs11ha.CBCIVSize
	} else {
		p.padBlock = pkcs11ha.CBCIVSize
	}
	return p, nil
}

// gcmParams reads and checks CK_GCM_PARAMS against what pkcs11ha.SecretKey.EncryptGCM takes.
func gcmParams(mp *p11rpc.Mechanism) (*p11rpc.GCMParams, error) {
	gp, err := mp.GCM()
	switch {
	case err != nil:
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "CK_GCM_PARAMS: "+err.Error())
	case gp == nil:
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "CKM_AES_GCM needs CK_GCM_PARAMS")
	case len(gp.IV) == 0 || len(gp.IV) > pkcs11ha.MaxGCMNonce:
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "AES-GCM IV length")
	case gp.IVBits != 0 && gp.IVBits != 8*uint64(len(gp.IV)):
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "AES-GCM ulIvBits does not match the IV")
	case gp.TagBits < pkcs11ha.MinGCMTagBits || gp.TagBits > pkcs11ha.MaxGCMTagBits || gp.TagBits%8 != 0:
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "AES-GCM tag length (96 to 128 bits, whole bytes)")
	case len(gp.AAD) > pkcs11ha.MaxSecretInput:
		return nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "AES-GCM additional data too long")
	}
	return gp, nil
}

// secretMechsOf are the secret-key mechanisms partition's keys can use (C_GetMechanismList).
func (c *conn) secretMechsOf(partition string) []*mech {
	infos, err := c.s.be.SecretKeys(partition)
	if err != nil {
		return nil
	}
	var out []*mech
	for i := range secretMechanisms {
		m := &secretMechanisms[i]
		for _, si := range infos {
			if keyType, ok := secretKeyType(si); ok && secretKeyFits(m, keyType) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// secretKeyFits tells whether a key of type keyType can use mechanism m.
func secretKeyFits(m *mech, keyType uint64) bool {
	if m.kind == kindGCM || m.kind == kindCBCPad {
		return keyType == pkcs11.CKK_AES
	}
	return keyType == pkcs11.CKK_GENERIC_SECRET || keyType == hmacKeyType[hmacHash[m.typ]]
}

// tokenMech is mechanism t as token partition offers it: the key pairs' always, a secret key's when
// the token holds a key for it.
func (c *conn) tokenMech(partition string, t uint64) *mech {
	m := mechByType[t]
	if m == nil || !secretKind(m.kind) {
		return m
	}
	for _, sm := range c.secretMechsOf(partition) {
		if sm == m {
			return m
		}
	}
	return nil
}
