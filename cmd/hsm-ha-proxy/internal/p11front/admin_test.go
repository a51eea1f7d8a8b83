package p11front

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"os"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// adminAuth grants partitions by uid (fakeAuth) and admin: true to the uids in admins, as the client
// table does (proxy.Server.UnixAdmin).
type adminAuth struct {
	fakeAuth
	admins map[int]bool
}

func (a adminAuth) UnixAdmin(uid, _ int) bool { return a.admins[uid] }

var oidP256DER, _ = asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})

// ecTemplates are the templates of a P-256 key pair labelled label (no CKA_ID), as pkcs11-tool sends them.
func ecTemplates(label string) (pub, priv []*pkcs11.Attribute) {
	return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256DER), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}
}

var ecGen = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}

// openRW opens a read-write session on the token labelled label.
func openRW(t *testing.T, p *pkcs11.Ctx, label string) pkcs11.SessionHandle {
	t.Helper()
	slot := tokenSlot(t, p, label)
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.CloseSession(s) })
	return s
}

func tokenSlot(t *testing.T, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	for _, sl := range slots {
		if ti, err := p.GetTokenInfo(sl); err == nil && ti.Label == label {
			return sl
		}
	}
	t.Fatalf("no token %q", label)
	return 0
}

// attr reads one attribute of object o.
func attr(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle, o pkcs11.ObjectHandle, typ uint) []byte {
	t.Helper()
	a, err := p.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	require.NoError(t, err)
	return a[0].Value
}

// selfCert is a certificate of pub (CN = cn) issued by a throw-away software CA.
func selfCert(t *testing.T, pub any, cn string, serial int64) []byte {
	t.Helper()
	ca, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &x509.Certificate{Subject: pkix.Name{CommonName: "test CA"}}, pub, ca)
	require.NoError(t, err)
	return der
}

func certAttrs(der []byte, label string, id []byte) []*pkcs11.Attribute {
	a := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509), pkcs11.NewAttribute(pkcs11.CKA_VALUE, der),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}
	if id != nil {
		a = append(a, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	return a
}

// TestKeyAdminThroughTheClient drives the management calls through the stock p11-kit-client.so against the
// real cluster (four SoftHSM devices, key_replication import), each result read back from every device
// itself: a key pair made with C_GenerateKeyPair (its handles are the ones C_FindObjects gives, its CKA_ID
// the library's default, its signatures verify), its certificate written, replaced and removed, the key
// renamed (its handles keep naming it) and destroyed through its public half (both handles end).
func TestKeyAdminThroughTheClient(t *testing.T) {
	d := startKeyDevices(t, softhsmtest.Options{SecretKeys: softhsmtest.DefaultSecretKeys()})
	me := os.Getuid()
	f := startFront(t, ClusterBackend(d.cl), adminAuth{fakeAuth{me: {"payments", "ledger"}}, map[int]bool{me: true}},
		d.cl.Config().PartitionNames())
	p := openClient(t, f.socket)
	s := openRW(t, p, "payments")

	info, err := p.GetMechanismInfo(tokenSlot(t, p, "payments"), []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)})
	require.NoError(t, err)
	assert.NotZero(t, info.Flags&pkcs11.CKF_GENERATE_KEY_PAIR)
	assert.Equal(t, []uint{256, 384}, []uint{info.MinKeySize, info.MaxKeySize})

	pubT, privT := ecTemplates("fe-ec")
	pubH, privH, err := p.GenerateKeyPair(s, ecGen, pubT, privT)
	require.NoError(t, err)
	assert.Equal(t, privH, findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "fe-ec"), "the handle C_FindObjects gives")
	assert.Equal(t, pubH, findKey(t, p, s, pkcs11.CKO_PUBLIC_KEY, "fe-ec"))
	spki := attr(t, p, s, pubH, pkcs11.CKA_PUBLIC_KEY_INFO)
	pub, err := x509.ParsePKIXPublicKey(spki)
	require.NoError(t, err)
	point, err := pub.(*ecdsa.PublicKey).Bytes()
	require.NoError(t, err)
	wantID := sha1.Sum(point)
	assert.Equal(t, wantID[:], attr(t, p, s, privH, pkcs11.CKA_ID), "CKA_ID defaults to the key identifier (SHA-1 of the public key)")
	for _, dev := range d.deviceNames() {
		assert.Equal(t, spki, d.deviceObject(t, dev, "payments", "pubkey", "fe-ec"), "the public key on %s, read from the device", dev)
	}
	assert.Equal(t, []string{"fe-ec"}, handedOver(f, privH, pubH), "the hot upgrade hands the new handles over")
	signVerify(t, p, s, privH, pub.(*ecdsa.PublicKey))

	t.Run("certificate", func(t *testing.T) { testCertificateAdmin(t, d, p, s, pub, wantID[:]) })

	require.NoError(t, p.SetAttributeValue(s, privH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "fe-ec-renamed")}))
	assert.Equal(t, "fe-ec-renamed", string(attr(t, p, s, privH, pkcs11.CKA_LABEL)), "the handle names the renamed key")
	assert.Equal(t, "fe-ec-renamed", string(attr(t, p, s, pubH, pkcs11.CKA_LABEL)))
	for _, dev := range d.deviceNames() {
		assert.Equal(t, spki, d.deviceObject(t, dev, "payments", "pubkey", "fe-ec-renamed"), "renamed on %s", dev)
		assert.Nil(t, d.deviceObject(t, dev, "payments", "pubkey", "fe-ec"), "the old label is gone from %s", dev)
	}
	signVerify(t, p, s, privH, pub.(*ecdsa.PublicKey))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_READ_ONLY),
		p.SetAttributeValue(s, privH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{9})}))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID),
		p.SetAttributeValue(s, privH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rsa-key")}), "the label is taken")

	aes := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "aes-key")
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ACTION_PROHIBITED), p.DestroyObject(s, aes), "secret keys are not destroyed here")

	require.NoError(t, p.DestroyObject(s, pubH), "either half destroys the pair")
	for _, h := range []pkcs11.ObjectHandle{privH, pubH} {
		_, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID), err)
	}
	for _, dev := range d.deviceNames() {
		assert.Nil(t, d.deviceObject(t, dev, "payments", "pubkey", "fe-ec-renamed"), "destroyed on %s", dev)
	}
	_, err = d.cl.Key(t.Context(), "payments", "fe-ec-renamed")
	assert.ErrorIs(t, err, pkcs11ha.ErrUnknownKey)

	ro, err := p.OpenSession(tokenSlot(t, p, "payments"), pkcs11.CKF_SERIAL_SESSION)
	require.NoError(t, err)
	_, _, err = p.GenerateKeyPair(ro, ecGen, pubT, privT)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_SESSION_READ_ONLY), err)
	_, _, err = p.GenerateKeyPair(s, ecGen, append(pubT[:6:6], pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rsa-key")),
		append(privT[:7:7], pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rsa-key")))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID), err, "the label is taken")
	assert.Contains(t, f.logs.String(), "a key with this label exists", "the log says why")
}

// signVerify signs a digest with key h through the front end and verifies it with the Go standard library.
func signVerify(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle, pub *ecdsa.PublicKey) {
	t.Helper()
	digest := sha256.Sum256([]byte("made through the front end"))
	require.NoError(t, p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h))
	sig, err := p.Sign(s, digest[:])
	require.NoError(t, err)
	assert.True(t, verifyECDSA(pub, digest[:], sig), "the signature verifies")
}

// handedOver are the labels the registry's export (what a hot upgrade hands over) gives handles hs.
func handedOver(f *frontT, hs ...pkcs11.ObjectHandle) []string {
	labels := map[string]bool{}
	for _, o := range f.srv.objs.export().Objects {
		for _, h := range hs {
			if o.Handle == uint64(h) {
				labels[o.Label] = true
			}
		}
	}
	var out []string
	for l := range labels {
		out = append(out, l)
	}
	return out
}

// testCertificateAdmin writes a certificate of key fe-ec (id) through C_CreateObject, replaces it with
// another and removes it, reading each device after each step.
func testCertificateAdmin(t *testing.T, d *devices, p *pkcs11.Ctx, s pkcs11.SessionHandle, pub any, id []byte) {
	first, second := selfCert(t, pub, "fe-ec", 1), selfCert(t, pub, "fe-ec renewed", 2)
	var h pkcs11.ObjectHandle
	for _, der := range [][]byte{first, second} {
		var err error
		h, err = p.CreateObject(s, certAttrs(der, "fe-ec", nil))
		require.NoError(t, err)
		assert.Equal(t, der, attr(t, p, s, h, pkcs11.CKA_VALUE), "the new object is the certificate")
		assert.Equal(t, id, attr(t, p, s, h, pkcs11.CKA_ID), "with the key's CKA_ID by default")
		for _, dev := range d.deviceNames() {
			assert.Equal(t, der, d.deviceObject(t, dev, "payments", "cert", "fe-ec"), "the certificate on %s (the second replaces the first)", dev)
		}
	}
	_, err := p.CreateObject(s, certAttrs(selfCert(t, d.keys["rsa-key"].Public(), "x", 3), "other", []byte{0x77}))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID), err, "neither the label nor the ID of the key it certifies")
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, err = p.CreateObject(s, certAttrs(selfCert(t, ec.Public(), "x", 4), "stranger", nil))
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID), err, "it certifies no key of the token")
	_, err = p.CreateObject(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "lone")})
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID), err, "no lone public keys")

	require.NoError(t, p.DestroyObject(s, h))
	for _, dev := range d.deviceNames() {
		assert.Nil(t, d.deviceObject(t, dev, "payments", "cert", "fe-ec"), "the certificate left %s", dev)
		assert.NotNil(t, d.deviceObject(t, dev, "payments", "pubkey", "fe-ec"), "the key stays on %s", dev)
	}
}

// TestKeyAdminRefused: a client the table does not grant admin: true sees no key-pair generation
// mechanism and gets CKR_TOKEN_WRITE_PROTECTED from every management call, which changes nothing; a backend
// without key management answers CKR_FUNCTION_NOT_SUPPORTED.
func TestKeyAdminRefused(t *testing.T) {
	d := startKeyDevices(t, softhsmtest.Options{})
	me := os.Getuid()
	for name, auth := range map[string]Authorizer{
		"no admin in the table":        adminAuth{fakeAuth{me: {"payments"}}, map[int]bool{me + 1: true}},
		"an authorizer without admins": fakeAuth{me: {"payments"}},
	} {
		t.Run(name, func(t *testing.T) {
			f := startFront(t, ClusterBackend(d.cl), auth, d.cl.Config().PartitionNames())
			p := openClient(t, f.socket)
			s := openRW(t, p, "payments")
			mechs, err := p.GetMechanismList(tokenSlot(t, p, "payments"))
			require.NoError(t, err)
			for _, m := range mechs {
				assert.NotEqual(t, uint(pkcs11.CKM_EC_KEY_PAIR_GEN), m.Mechanism)
				assert.NotEqual(t, uint(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN), m.Mechanism)
			}
			want := pkcs11.Error(pkcs11.CKR_TOKEN_WRITE_PROTECTED)
			pubT, privT := ecTemplates("app-key")
			_, _, err = p.GenerateKeyPair(s, ecGen, pubT, privT)
			assert.Equal(t, want, err)
			priv := findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "rsa-key")
			assert.Equal(t, want, p.DestroyObject(s, priv))
			assert.Equal(t, want, p.SetAttributeValue(s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "mine")}))
			_, err = p.CreateObject(s, certAttrs(selfCert(t, d.keys["rsa-key"].Public(), "rsa-key", 1), "rsa-key", nil))
			assert.Equal(t, want, err)
			assert.Equal(t, "rsa-key", string(attr(t, p, s, priv, pkcs11.CKA_LABEL)))
			for _, dev := range d.deviceNames() {
				assert.NotNil(t, d.deviceObject(t, dev, "payments", "pubkey", "rsa-key"), "unchanged on %s", dev)
				assert.Nil(t, d.deviceObject(t, dev, "payments", "pubkey", "app-key"))
				assert.Nil(t, d.deviceObject(t, dev, "payments", "cert", "rsa-key"))
			}
			assert.Contains(t, f.logs.String(), "not granted admin: true")
		})
	}
	t.Run("a backend without key management", func(t *testing.T) {
		rsaKey, _, _ := softSigners(t)
		be := newFakeBackend()
		be.add("payments", "rsa-key", []byte{1}, rsaKey)
		f := startFront(t, be, adminAuth{fakeAuth{me: {"payments"}}, map[int]bool{me: true}}, []string{"payments"})
		p := openClient(t, f.socket)
		s := openRW(t, p, "payments")
		pubT, privT := ecTemplates("x")
		_, _, err := p.GenerateKeyPair(s, ecGen, pubT, privT)
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_FUNCTION_NOT_SUPPORTED), err)
	})
}
