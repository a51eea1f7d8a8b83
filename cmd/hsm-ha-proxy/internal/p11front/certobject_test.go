package p11front

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCertificateObjects: a key with a certificate gets a CKO_CERTIFICATE object with the key's label and
// id, found by templates and answering the X.509 attributes, through the stock client; it comes and goes
// with the key's certificate and is not a key.
func TestCertificateObjects(t *testing.T) {
	c, _, be := newClientT(t)
	rsaCert := testCert(t, c.rsaKey, "rsa-key", 4711)
	ecCert := testCert(t, c.ecKey, "ec-key", 42)
	be.setCert("payments", "rsa-key", rsaCert)
	be.setCert("payments", "ec-key", ecCert)
	find := func(tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
		t.Helper()
		require.NoError(t, c.p.FindObjectsInit(c.s, tmpl))
		defer func() { require.NoError(t, c.p.FindObjectsFinal(c.s)) }()
		objs, _, err := c.p.FindObjects(c.s, 100)
		require.NoError(t, err)
		return objs
	}
	certClass := pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE)
	assert.Len(t, find(), 6, "two keys, private, public and certificate")
	assert.Len(t, find(certClass), 2)
	assert.Len(t, find(pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{1})), 3, "the certificate has the key's CKA_ID")
	// What Java's SunPKCS11 KeyStore asks for.
	byID := find(certClass, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{2}))
	require.Len(t, byID, 1)
	assert.Equal(t, byID, find(certClass, pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ec-key")))
	assert.Empty(t, find(certClass, pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true)))

	h := find(certClass, pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rsa-key"))[0]
	cert, err := x509.ParseCertificate(rsaCert)
	require.NoError(t, err)
	serial, err := asn1.Marshal(big.NewInt(4711))
	require.NoError(t, err)
	check := sha1.Sum(rsaCert)
	want := []struct {
		typ  uint
		want []byte
	}{
		{pkcs11.CKA_CLASS, ulong(pkcs11.CKO_CERTIFICATE)},
		{pkcs11.CKA_TOKEN, []byte{1}},
		{pkcs11.CKA_PRIVATE, []byte{0}},
		{pkcs11.CKA_MODIFIABLE, []byte{0}},
		{pkcs11.CKA_TRUSTED, []byte{0}},
		{pkcs11.CKA_LABEL, []byte("rsa-key")},
		{pkcs11.CKA_ID, []byte{1}},
		{pkcs11.CKA_CERTIFICATE_TYPE, ulong(pkcs11.CKC_X_509)},
		{pkcs11.CKA_CERTIFICATE_CATEGORY, ulong(1)},
		{pkcs11.CKA_SUBJECT, cert.RawSubject},
		{pkcs11.CKA_ISSUER, cert.RawIssuer},
		{pkcs11.CKA_SERIAL_NUMBER, serial},
		{pkcs11.CKA_VALUE, rsaCert},
		{pkcs11.CKA_CHECK_VALUE, check[:3]},
		{pkcs11.CKA_START_DATE, []byte(cert.NotBefore.UTC().Format("20060102"))},
		{pkcs11.CKA_PUBLIC_KEY_INFO, cert.RawSubjectPublicKeyInfo},
	}
	tmpl := make([]*pkcs11.Attribute, len(want))
	for i, w := range want {
		tmpl[i] = pkcs11.NewAttribute(w.typ, nil)
	}
	attrs, err := c.p.GetAttributeValue(c.s, h, tmpl)
	require.NoError(t, err)
	for i, w := range want {
		assert.Equal(t, w.want, attrs[i].Value, "attribute 0x%x", w.typ)
	}
	_, err = c.p.GetAttributeValue(c.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID), err, "a certificate is no key")
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID), c.p.SignInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS, nil), h))
	size, err := c.p.GetObjectSize(c.s, h)
	require.NoError(t, err)
	assert.Greater(t, size, uint(len(rsaCert)))

	t.Run("the certificate goes and comes back under its handle", func(t *testing.T) {
		be.setCert("payments", "rsa-key", nil)
		assert.Len(t, find(certClass), 1)
		_, err := c.p.GetAttributeValue(c.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID), err)
		renewed := testCert(t, c.rsaKey, "rsa-key", 4712)
		be.setCert("payments", "rsa-key", renewed)
		assert.Equal(t, []pkcs11.ObjectHandle{h}, find(certClass, pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{1})))
		attrs, err := c.p.GetAttributeValue(c.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		require.NoError(t, err)
		assert.Equal(t, renewed, attrs[0].Value)
	})
	t.Run("another partition's token has its own objects", func(t *testing.T) {
		s := openSession(t, c.p, "ledger")
		require.NoError(t, c.p.FindObjectsInit(s, []*pkcs11.Attribute{certClass}))
		objs, _, err := c.p.FindObjects(s, 10)
		require.NoError(t, err)
		require.NoError(t, c.p.FindObjectsFinal(s))
		assert.Empty(t, objs)
		_, err = c.p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		assert.Equal(t, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID), err)
	})
}

// ulong is a CK_ULONG attribute value as the client returns it (host order, 64-bit).
func ulong(v uint64) []byte {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b
}

// testCert is a self-signed certificate for key.
func testCert(t *testing.T, key crypto.Signer, cn string, serial int64) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	return der
}
