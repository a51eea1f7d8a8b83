package p11front

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/gob"
	"errors"
	"math/big"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// session is a client session on the payments token of a software front end.
type clientT struct {
	p       *pkcs11.Ctx
	s       pkcs11.SessionHandle
	rsaPriv pkcs11.ObjectHandle
	rsaPub  pkcs11.ObjectHandle
	ecPriv  pkcs11.ObjectHandle
	ecPub   pkcs11.ObjectHandle
	rsaKey  *rsa.PrivateKey
	ecKey   *ecdsa.PrivateKey
}

func newClientT(t *testing.T) (*clientT, *frontT, *fakeBackend) {
	f, be := softFront(t)
	c := &clientT{p: openClient(t, f.socket)}
	c.s = openSession(t, c.p, "payments")
	c.rsaPriv = findKey(t, c.p, c.s, pkcs11.CKO_PRIVATE_KEY, "rsa-key")
	c.rsaPub = findKey(t, c.p, c.s, pkcs11.CKO_PUBLIC_KEY, "rsa-key")
	c.ecPriv = findKey(t, c.p, c.s, pkcs11.CKO_PRIVATE_KEY, "ec-key")
	c.ecPub = findKey(t, c.p, c.s, pkcs11.CKO_PUBLIC_KEY, "ec-key")
	r, e, _ := softSigners(t)
	c.rsaKey, c.ecKey = r.(*rsa.PrivateKey), e.(*ecdsa.PrivateKey)
	return c, f, be
}

func mechOf(t uint, param any) []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(t, param)}
}

func TestSignMechanisms(t *testing.T) {
	c, _, _ := newClientT(t)
	msg := []byte("a message signed through the front end")
	d256, d384 := sha256.Sum256(msg), sha512.Sum384(msg)
	_ = d384
	di := append([]byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}, d256[:]...)
	rpub, epub := &c.rsaKey.PublicKey, &c.ecKey.PublicKey
	pss := func(h, mgf, salt uint) any { return pkcs11.NewPSSParams(h, mgf, salt) }
	tests := []struct {
		name   string
		mech   []*pkcs11.Mechanism
		key    pkcs11.ObjectHandle
		input  []byte
		verify func(sig []byte) error
	}{
		{"RSA-PKCS raw DigestInfo", mechOf(pkcs11.CKM_RSA_PKCS, nil), c.rsaPriv, di,
			func(sig []byte) error { return rsa.VerifyPKCS1v15(rpub, crypto.SHA256, d256[:], sig) }},
		{"SHA256-RSA-PKCS", mechOf(pkcs11.CKM_SHA256_RSA_PKCS, nil), c.rsaPriv, msg,
			func(sig []byte) error { return rsa.VerifyPKCS1v15(rpub, crypto.SHA256, d256[:], sig) }},
		{"SHA384-RSA-PKCS", mechOf(pkcs11.CKM_SHA384_RSA_PKCS, nil), c.rsaPriv, msg,
			func(sig []byte) error { return rsa.VerifyPKCS1v15(rpub, crypto.SHA384, d384[:], sig) }},
		{"RSA-PSS raw", mechOf(pkcs11.CKM_RSA_PKCS_PSS, pss(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 32)), c.rsaPriv, d256[:],
			func(sig []byte) error {
				return rsa.VerifyPSS(rpub, crypto.SHA256, d256[:], sig, &rsa.PSSOptions{SaltLength: 32})
			}},
		{"ECDSA raw", mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv, d256[:],
			func(sig []byte) error { return verifyRaw(epub, d256[:], sig) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, c.p.SignInit(c.s, tt.mech, tt.key))
			sig, err := c.p.Sign(c.s, tt.input)
			require.NoError(t, err)
			require.NoError(t, tt.verify(sig), "verified with the Go standard library")

			// The same through C_SignUpdate/C_SignFinal, in two parts.
			require.NoError(t, c.p.SignInit(c.s, tt.mech, tt.key))
			require.NoError(t, c.p.SignUpdate(c.s, tt.input[:5]))
			require.NoError(t, c.p.SignUpdate(c.s, tt.input[5:]))
			sig, err = c.p.SignFinal(c.s)
			require.NoError(t, err)
			require.NoError(t, tt.verify(sig))

			// And C_Verify in the front end accepts it with the public key, and refuses a changed one.
			require.NoError(t, c.p.VerifyInit(c.s, tt.mech, pubOf(c, tt.key)))
			require.NoError(t, c.p.Verify(c.s, tt.input, sig))
			sig[len(sig)-1] ^= 1
			require.NoError(t, c.p.VerifyInit(c.s, tt.mech, pubOf(c, tt.key)))
			assert.Equal(t, pkcs11.Error(pkcs11.CKR_SIGNATURE_INVALID), c.p.Verify(c.s, tt.input, sig))
		})
	}
}

// TestHashAndSignPlans covers the mechanisms p11-kit 0.24's client cannot carry (the 0.25.6+ clients do):
// the front end hashes, the cluster signs the digest, the signature verifies. Halfway through, the active
// operation goes through encoding/gob and the copy goes on: its state is plain data, which a hot upgrade
// hands to the next process.
func TestHashAndSignPlans(t *testing.T) {
	rsaKey, ecKey, _ := softSigners(t)
	objs, _ := newRegistry().objectsOf("p", []pkcs11ha.KeyInfo{
		{Label: "r", ID: "01", Public: rsaKey.Public()}, {Label: "e", ID: "02", Public: ecKey.Public()}})
	msg := []byte("hash me in the sidecar")
	tests := []struct {
		mech   uint64
		obj    *object
		param  *p11rpc.Mechanism
		verify func(digest, sig []byte) error
	}{
		{pkcs11.CKM_SHA384_RSA_PKCS_PSS, objs[0], &p11rpc.Mechanism{PSS: &p11rpc.PSSParams{Hash: pkcs11.CKM_SHA384, MGF: pkcs11.CKG_MGF1_SHA384, SaltLen: 48}},
			func(d, sig []byte) error {
				return rsa.VerifyPSS(rsaKey.Public().(*rsa.PublicKey), crypto.SHA384, d, sig, &rsa.PSSOptions{SaltLength: 48})
			}},
		{pkcs11.CKM_SHA512_RSA_PKCS, objs[0], &p11rpc.Mechanism{},
			func(d, sig []byte) error {
				return rsa.VerifyPKCS1v15(rsaKey.Public().(*rsa.PublicKey), crypto.SHA512, d, sig)
			}},
		{pkcs11.CKM_ECDSA_SHA384, objs[2], &p11rpc.Mechanism{},
			func(d, sig []byte) error { return verifyRaw(ecKey.Public().(*ecdsa.PublicKey), d, sig) }},
	}
	for _, tt := range tests {
		t.Run(mechLabel(tt.mech), func(t *testing.T) {
			m, err := mechNamed(tt.mech, pkcs11.CKF_SIGN)
			require.NoError(t, err)
			tt.param.Type = tt.mech
			plan, err := sigPlan(m, tt.param, tt.obj)
			require.NoError(t, err)
			op := &activeOp{Mech: *tt.param.Clone(), Key: tt.obj.handle}
			require.NoError(t, op.update(plan, msg[:4], false, pkcs11.CKR_DATA_LEN_RANGE))

			var buf bytes.Buffer
			require.NoError(t, gob.NewEncoder(&buf).Encode(op))
			moved := &activeOp{}
			require.NoError(t, gob.NewDecoder(&buf).Decode(moved))
			require.Equal(t, op, moved)

			require.NoError(t, moved.update(plan, msg[4:], false, pkcs11.CKR_DATA_LEN_RANGE))
			src, err := moved.source(plan, nil, true, pkcs11.CKR_DATA_LEN_RANGE)
			require.NoError(t, err)
			digest, err := plan.message(src, true)
			require.NoError(t, err)
			h := m.hash.New()
			h.Write(msg)
			require.Equal(t, h.Sum(nil), digest)
			signer := rsaKey
			if tt.obj.pub != rsaKey.Public() {
				signer = ecKey
			}
			sig, err := signer.Sign(rand.Reader, digest, plan.signerOpts())
			require.NoError(t, err)
			if m.kind == kindECDSA {
				sig, err = rawECDSA(sig, plan.outLen/2)
				require.NoError(t, err)
			}
			require.NoError(t, tt.verify(digest, sig))
			require.NoError(t, plan.check(digest, sig), "C_Verify's check agrees")
		})
	}
}

func pubOf(c *clientT, priv pkcs11.ObjectHandle) pkcs11.ObjectHandle {
	if priv == c.rsaPriv {
		return c.rsaPub
	}
	return c.ecPub
}

func verifyRaw(pub *ecdsa.PublicKey, digest, sig []byte) error {
	if len(sig) != 64 {
		return errors.New("not a P-256 r||s signature")
	}
	if !ecdsa.Verify(pub, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return errors.New("ECDSA signature does not verify")
	}
	return nil
}

func TestSignErrors(t *testing.T) {
	c, f, be := newClientT(t)
	d := sha256.Sum256([]byte("x"))
	t.Run("operation not initialized", func(t *testing.T) {
		_, err := c.p.Sign(c.s, d[:])
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_OPERATION_NOT_INITIALIZED), err)
	})
	t.Run("a public key cannot sign", func(t *testing.T) {
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED), c.p.SignInit(c.s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPub))
	})
	t.Run("an RSA mechanism on an EC key", func(t *testing.T) {
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_KEY_TYPE_INCONSISTENT), c.p.SignInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS, nil), c.ecPriv))
	})
	t.Run("an unknown mechanism", func(t *testing.T) {
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID), c.p.SignInit(c.s, mechOf(pkcs11.CKM_SHA1_RSA_PKCS, nil), c.rsaPriv))
	})
	t.Run("PSS with a zero salt, a salt too long or another MGF hash", func(t *testing.T) {
		for _, p := range [][]byte{
			pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 0),
			pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 256-32-1),
			pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA1, 32),
		} {
			assert.Equal(t, pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID),
				c.p.SignInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS_PSS, p), c.rsaPriv))
		}
		zero := pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 0)
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID), c.p.VerifyInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS_PSS, zero), c.rsaPub))
		logs := f.logs.String()
		assert.Equal(t, 2, strings.Count(logs, "RSA-PSS with a salt length of 0 is not supported"), logs)
		assert.Contains(t, logs, "C_SignInit refused")
		assert.Contains(t, logs, "C_VerifyInit refused")
		// The largest salt the key allows is accepted (the error above is the zero, not the range).
		require.NoError(t, c.p.SignInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 256-32-2)), c.rsaPriv))
		sig, err := c.p.Sign(c.s, d[:])
		require.NoError(t, err)
		require.NoError(t, rsa.VerifyPSS(&c.rsaKey.PublicKey, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: 256 - 32 - 2}))
	})
	t.Run("second init while active", func(t *testing.T) {
		require.NoError(t, c.p.SignInit(c.s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv))
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_OPERATION_ACTIVE), c.p.SignInit(c.s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv))
		_, err := c.p.Sign(c.s, d[:])
		require.NoError(t, err)
	})
	t.Run("the cluster cannot serve: CKR_FUNCTION_FAILED, and the session goes on", func(t *testing.T) {
		k := be.parts["payments"]["ec-key"]
		k.setFail(pkcs11ha.ErrNoDevice)
		require.NoError(t, c.p.SignInit(c.s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv))
		_, err := c.p.Sign(c.s, d[:])
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED), err)
		k.setFail(nil)
		require.NoError(t, c.p.SignInit(c.s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv))
		_, err = c.p.Sign(c.s, d[:])
		require.NoError(t, err)
	})
	t.Run("raw RSA input too long for the key", func(t *testing.T) {
		require.NoError(t, c.p.SignInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS, nil), c.rsaPriv))
		_, err := c.p.Sign(c.s, make([]byte, 250))
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE), err)
	})
}

func TestDecryptAndEncrypt(t *testing.T) {
	c, _, be := newClientT(t)
	pub := &c.rsaKey.PublicKey
	secret := []byte("a session key, say")
	oaep := func(h, mgf uint, label []byte) any {
		return pkcs11.NewOAEPParams(h, mgf, pkcs11.CKZ_DATA_SPECIFIED, label)
	}
	tests := []struct {
		name string
		mech []*pkcs11.Mechanism
		ct   func() ([]byte, error)
	}{
		{"PKCS#1 v1.5", mechOf(pkcs11.CKM_RSA_PKCS, nil), func() ([]byte, error) { return rsa.EncryptPKCS1v15(rand.Reader, pub, secret) }},
		{"OAEP SHA-1", mechOf(pkcs11.CKM_RSA_PKCS_OAEP, oaep(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, nil)),
			func() ([]byte, error) { return rsa.EncryptOAEP(crypto.SHA1.New(), rand.Reader, pub, secret, nil) }},
		{"OAEP SHA-256 with a label", mechOf(pkcs11.CKM_RSA_PKCS_OAEP, oaep(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, []byte("label"))),
			func() ([]byte, error) {
				return rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, secret, []byte("label"))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct, err := tt.ct()
			require.NoError(t, err)
			require.NoError(t, c.p.DecryptInit(c.s, tt.mech, c.rsaPriv))
			pt, err := c.p.Decrypt(c.s, ct)
			require.NoError(t, err)
			assert.Equal(t, secret, pt)

			// C_Encrypt with the public key, decrypted by the cluster.
			require.NoError(t, c.p.EncryptInit(c.s, tt.mech, c.rsaPub))
			ct, err = c.p.Encrypt(c.s, secret)
			require.NoError(t, err)
			require.NoError(t, c.p.DecryptInit(c.s, tt.mech, c.rsaPriv))
			for _, part := range [][]byte{ct[:100], ct[100:]} {
				out, err := c.p.DecryptUpdate(c.s, part)
				require.NoError(t, err)
				require.Empty(t, out)
			}
			pt, err = c.p.DecryptFinal(c.s)
			require.NoError(t, err)
			assert.Equal(t, secret, pt)
		})
	}
	t.Run("a refused decrypt is CKR_ENCRYPTED_DATA_INVALID", func(t *testing.T) {
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, secret, nil)
		require.NoError(t, err)
		require.NoError(t, c.p.DecryptInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS_OAEP, oaep(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, nil)), c.rsaPriv))
		_, err = c.p.Decrypt(c.s, ct)
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID), err)
		assert.Zero(t, be.signs.Load())
	})
	t.Run("an EC key cannot decrypt", func(t *testing.T) {
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED), c.p.DecryptInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS, nil), c.ecPub))
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID), c.p.DecryptInit(c.s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv))
	})
}

func TestDigestAndRandom(t *testing.T) {
	c, _, _ := newClientT(t)
	msg := []byte("digest me")
	want := sha256.Sum256(msg)
	require.NoError(t, c.p.DigestInit(c.s, mechOf(pkcs11.CKM_SHA256, nil)))
	got, err := c.p.Digest(c.s, msg)
	require.NoError(t, err)
	assert.Equal(t, want[:], got)
	require.NoError(t, c.p.DigestInit(c.s, mechOf(pkcs11.CKM_SHA256, nil)))
	require.NoError(t, c.p.DigestUpdate(c.s, msg[:3]))
	require.NoError(t, c.p.DigestUpdate(c.s, msg[3:]))
	got, err = c.p.DigestFinal(c.s)
	require.NoError(t, err)
	assert.Equal(t, want[:], got)

	r1, err := c.p.GenerateRandom(c.s, 32)
	require.NoError(t, err)
	r2, err := c.p.GenerateRandom(c.s, 32)
	require.NoError(t, err)
	assert.Len(t, r1, 32)
	assert.NotEqual(t, r1, r2)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_RANDOM_SEED_NOT_SUPPORTED), c.p.SeedRandom(c.s, []byte("seed")))
}

func TestObjectsAndAttributes(t *testing.T) {
	c, f, _ := newClientT(t)
	find := func(tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
		require.NoError(t, c.p.FindObjectsInit(c.s, tmpl))
		defer func() { require.NoError(t, c.p.FindObjectsFinal(c.s)) }()
		objs, _, err := c.p.FindObjects(c.s, 100)
		require.NoError(t, err)
		return objs
	}
	assert.Len(t, find(), 4, "rsa-key and ec-key, private and public; ed-key is not presented")
	assert.Len(t, find(pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)), 2)
	assert.Len(t, find(pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{1})), 2)
	assert.Equal(t, []pkcs11.ObjectHandle{c.ecPub}, find(pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)))
	assert.Empty(t, find(pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ed-key")))
	assert.Contains(t, f.logs.String(), "key not presented")
	assert.Empty(t, find(pkcs11.NewAttribute(pkcs11.CKA_SIGN, false), pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)))

	attrs, err := c.p.GetAttributeValue(c.s, c.rsaPriv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
	require.NoError(t, err)
	assert.Equal(t, c.rsaKey.N.Bytes(), attrs[0].Value)
	assert.Equal(t, big.NewInt(int64(c.rsaKey.E)).Bytes(), attrs[1].Value)
	assert.Equal(t, []byte{1}, attrs[2].Value)
	assert.Equal(t, []byte{0}, attrs[3].Value)
	assert.Equal(t, "rsa-key", string(attrs[4].Value))

	_, err = c.p.GetAttributeValue(c.s, c.rsaPriv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_PRIVATE_EXPONENT, nil)})
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE), err)
	_, err = c.p.GetAttributeValue(c.s, c.ecPub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID), err)
	attrs, err = c.p.GetAttributeValue(c.s, c.ecPub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	require.NoError(t, err)
	raw, _ := c.ecKey.PublicKey.Bytes()
	assert.Equal(t, append([]byte{0x04, byte(len(raw))}, raw...), attrs[0].Value, "a DER OCTET STRING of the uncompressed point")
	_, err = c.p.GetAttributeValue(c.s, 9999, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID), err)
}

// TestAttributeAnswers checks C_GetAttributeValue's per-attribute rules on the object itself (the wire form
// of each answer is the codec's, golden-tested there).
func TestAttributeAnswers(t *testing.T) {
	rsaKey, _, _ := softSigners(t)
	objs, _ := newRegistry().objectsOf("p", []pkcs11ha.KeyInfo{{Label: "k", ID: "01", Public: rsaKey.Public()}})
	require.Len(t, objs, 2)
	priv := objs[0]
	tests := []struct {
		name    string
		typ     uint64
		len     uint64
		null    bool
		want    uint64
		invalid bool
	}{
		{"value", pkcs11.CKA_LABEL, 64, false, pkcs11.CKR_OK, false},
		{"size query", pkcs11.CKA_MODULUS, 0, true, pkcs11.CKR_OK, false},
		{"buffer too small", pkcs11.CKA_MODULUS, 255, false, pkcs11.CKR_BUFFER_TOO_SMALL, true},
		{"sensitive", pkcs11.CKA_PRIVATE_EXPONENT, 256, false, pkcs11.CKR_ATTRIBUTE_SENSITIVE, true},
		{"not an attribute of this object", pkcs11.CKA_EC_POINT, 256, false, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, code := priv.answer(reqOf(tt.typ, tt.len, tt.null))
			assert.Equal(t, tt.want, code)
			assert.Equal(t, tt.invalid, !a.Valid)
		})
	}
}

func TestSessionsAndLogin(t *testing.T) {
	c, _, _ := newClientT(t)
	info, err := c.p.GetSessionInfo(c.s)
	require.NoError(t, err)
	assert.Equal(t, uint(pkcs11.CKS_RO_PUBLIC_SESSION), info.State)
	require.NoError(t, c.p.Login(c.s, pkcs11.CKU_USER, "whatever the application passes"))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN), c.p.Login(c.s, pkcs11.CKU_USER, "x"))
	info, err = c.p.GetSessionInfo(c.s)
	require.NoError(t, err)
	assert.Equal(t, uint(pkcs11.CKS_RO_USER_FUNCTIONS), info.State)
	rw, err := c.p.OpenSession(info.SlotID, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	info, err = c.p.GetSessionInfo(rw)
	require.NoError(t, err)
	assert.Equal(t, uint(pkcs11.CKS_RW_USER_FUNCTIONS), info.State, "login is per token, for every session")
	require.NoError(t, c.p.CloseSession(rw))
	require.NoError(t, c.p.Logout(c.s))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN), c.p.Logout(c.s))

	var opened []pkcs11.SessionHandle
	for {
		s, err := c.p.OpenSession(info.SlotID, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			assert.Equal(t, pkcs11.Error(pkcs11.CKR_SESSION_COUNT), err)
			break
		}
		opened = append(opened, s)
		require.Less(t, len(opened), MaxSessions+1)
	}
	assert.Len(t, opened, MaxSessions-1, "the limit counts every session of the connection")
	require.NoError(t, c.p.CloseAllSessions(info.SlotID))
	_, err = c.p.GetSessionInfo(c.s)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID), err)
}

// TestConcurrentCallsOnOneConnection: an application's threads share one connection; their calls are
// served concurrently and each gets its own answer.
func TestConcurrentCallsOnOneConnection(t *testing.T) {
	c, _, _ := newClientT(t)
	slots, err := c.p.GetSlotList(true)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.p.OpenSession(slots[0], pkcs11.CKF_SERIAL_SESSION)
			if err != nil {
				errs <- err
				return
			}
			defer c.p.CloseSession(s)
			for i := range 20 {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				if err := c.p.SignInit(s, mechOf(pkcs11.CKM_ECDSA, nil), c.ecPriv); err != nil {
					errs <- err
					return
				}
				sig, err := c.p.Sign(s, d[:])
				if err == nil {
					err = verifyRaw(&c.ecKey.PublicKey, d[:], sig)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_ = os.Getpid()
}
