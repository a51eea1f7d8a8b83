package devicebackend

import (
	"bytes"
	"crypto/x509"
	"fmt"

	"github.com/miekg/pkcs11"
)

// CertObject is one X.509 certificate object found on a token.
type CertObject struct {
	Label string
	Id    []byte
	Der   []byte
}

// listCertificates returns the token's X.509 certificate objects. It is one search and one attribute read
// per certificate: cheap next to the key listing, and nothing when the token holds none.
func listCertificates(c *pkcs11.Ctx, s pkcs11.SessionHandle) ([]CertObject, error) {
	hs, err := findObjects(c, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
	})
	if err != nil {
		return nil, err
	}
	out := make([]CertObject, 0, len(hs))
	for _, h := range hs {
		a, err := c.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil),
		})
		if err != nil {
			return nil, err
		}
		out = append(out, CertObject{Label: string(a[0].Value), Id: a[1].Value, Der: a[2].Value})
	}
	return out, nil
}

// attachCertificates gives each key the certificate of certs that belongs to it (see above), or the
// reason why the ones with its CKA_ID or label were ignored. A failed search costs the keys their
// certificates, never the keys themselves.
func attachCertificates(c *pkcs11.Ctx, s pkcs11.SessionHandle, keys []*KeyObject) {
	if len(keys) == 0 {
		return
	}
	certs, err := listCertificates(c, s)
	if err != nil {
		for _, k := range keys {
			k.CertIgnored = fmt.Sprintf("certificate search failed: %v", err)
		}
		return
	}
	for _, k := range keys {
		k.Cert, k.CertIgnored = CertificateFor(k, certs)
	}
}

// CertificateFor returns the DER of the first certificate with k's CKA_ID, then of the first with its
// label, whose public key is k's; else nil and why the candidates were ignored ("" when there were none).
func CertificateFor(k *KeyObject, certs []CertObject) (der []byte, ignored string) {
	var byID, byLabel []CertObject
	for _, co := range certs {
		switch {
		case len(k.ID) > 0 && bytes.Equal(co.Id, k.ID):
			byID = append(byID, co)
		case co.Label == k.Label:
			byLabel = append(byLabel, co)
		}
	}
	for _, co := range append(byID, byLabel...) {
		cert, err := x509.ParseCertificate(co.Der)
		if err != nil {
			ignored = fmt.Sprintf("certificate %q is not X.509 that Go parses: %v", co.Label, err)
			continue
		}
		spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil || !bytes.Equal(spki, k.PubDER) {
			ignored = fmt.Sprintf("certificate %q (subject %q) holds another public key than the key", co.Label, cert.Subject.String())
			continue
		}
		return co.Der, ""
	}
	return nil, ignored
}
