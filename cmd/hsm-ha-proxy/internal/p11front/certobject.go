package p11front

import (
	"bytes"
	"crypto/sha1"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// ckCertificateCategoryTokenUser is CK_CERTIFICATE_CATEGORY_TOKEN_USER (PKCS#11 2.40): the certificate
// of the token's own key, which these are.
const ckCertificateCategoryTokenUser = 1

// certObjectOf returns the certificate object of key ki (a key the front end presents), building it when
// the key's certificate is new or changed, or nil when the key has none. A certificate keeps its handle
// while it comes and goes; while it is gone the handle is invalid. Called with r.mu held.
func (r *registry) certObjectOf(partition string, ki pkcs11ha.KeyInfo) *object {
	k := objKey{partition: partition, label: ki.Label, class: pkcs11.CKO_CERTIFICATE}
	h, ok := r.handles[k]
	if ki.Certificate == nil {
		if ok {
			delete(r.objects, h)
		}
		return nil
	}
	if !ok {
		h = r.next
		r.next++
		r.handles[k] = h
	}
	if o := r.objects[h]; o != nil && bytes.Equal(r.spki[h], ki.Certificate) {
		return o
	}
	o, err := buildCertObject(h, partition, ki)
	if err != nil {
		delete(r.objects, h)
		return nil // the cluster parsed it already; this cannot happen
	}
	r.objects[h], r.spki[h] = o, ki.Certificate
	return o
}

// buildCertObject builds the CKO_CERTIFICATE object (CKC_X_509) of ki's certificate: what Java's
// SunPKCS11 KeyStore pairs with the private key by CKA_ID, and where tools read the certificate.
func buildCertObject(h uint64, partition string, ki pkcs11ha.KeyInfo) (*object, error) {
	cert, err := x509.ParseCertificate(ki.Certificate)
	if err != nil {
		return nil, err
	}
	serial, err := asn1.Marshal(cert.SerialNumber)
	if err != nil {
		return nil, err
	}
	id, err := hex.DecodeString(ki.ID)
	if err != nil {
		id = []byte(ki.ID)
	}
	o := &object{handle: h, partition: partition, label: ki.Label, class: pkcs11.CKO_CERTIFICATE,
		attrs: map[uint64]p11rpc.Attribute{}, sensitive: map[uint64]bool{}, kinds: map[uint64]attrKind{}}
	o.setUlong(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE)
	o.setBools(map[uint64]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: false, pkcs11.CKA_MODIFIABLE: false,
		pkcs11.CKA_COPYABLE: false, pkcs11.CKA_DESTROYABLE: false, pkcs11.CKA_TRUSTED: false,
	})
	o.setBytes(pkcs11.CKA_LABEL, []byte(ki.Label))
	o.setBytes(pkcs11.CKA_ID, id)
	o.setUlong(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509)
	o.setUlong(pkcs11.CKA_CERTIFICATE_CATEGORY, ckCertificateCategoryTokenUser)
	o.setBytes(pkcs11.CKA_SUBJECT, cert.RawSubject)
	o.setBytes(pkcs11.CKA_ISSUER, cert.RawIssuer)
	o.setBytes(pkcs11.CKA_SERIAL_NUMBER, serial)
	o.setBytes(pkcs11.CKA_VALUE, ki.Certificate)
	o.setBytes(pkcs11.CKA_PUBLIC_KEY_INFO, cert.RawSubjectPublicKeyInfo)
	sum := sha1.Sum(ki.Certificate) // the spec's check value: the first 3 bytes of the value's SHA-1
	o.setBytes(pkcs11.CKA_CHECK_VALUE, sum[:3])
	o.setBytes(pkcs11.CKA_START_DATE, ckDate(cert.NotBefore))
	o.setBytes(pkcs11.CKA_END_DATE, ckDate(cert.NotAfter))
	o.setBytes(pkcs11.CKA_URL, []byte{})
	o.setBytes(pkcs11.CKA_HASH_OF_SUBJECT_PUBLIC_KEY, []byte{})
	o.setBytes(pkcs11.CKA_HASH_OF_ISSUER_PUBLIC_KEY, []byte{})
	o.setUlong(pkcs11.CKA_JAVA_MIDP_SECURITY_DOMAIN, 0) // CK_SECURITY_DOMAIN_UNSPECIFIED
	for _, a := range o.attrs {
		o.size += a.CLen()
	}
	return o, nil
}

// ckDate is a CK_DATE: "YYYYMMDD" in UTC.
func ckDate(t time.Time) []byte { return []byte(t.UTC().Format("20060102")) }
