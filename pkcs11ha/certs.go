package pkcs11ha

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Certificates are optional company for keys: applications that find keys through their certificate
// (Java's SunPKCS11 KeyStore lists a private key only when a certificate with its CKA_ID is on the token)
// need them, and the cluster passes on the one the devices hold. A certificate belongs to a key when it is
// an X.509 certificate object with the key's CKA_ID (or, failing that, its CKA_LABEL) and the key's public
// key; one with another public key is ignored, and the cluster logs that once.

// certObject is one X.509 certificate object found on a token.
type certObject struct {
	label string
	id    []byte
	der   []byte
}

// listCertificates returns the token's X.509 certificate objects. It is one search and one attribute read
// per certificate: cheap next to the key listing, and nothing when the token holds none.
func listCertificates(c *pkcs11.Ctx, s pkcs11.SessionHandle) ([]certObject, error) {
	hs, err := findObjects(c, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
	})
	if err != nil {
		return nil, err
	}
	out := make([]certObject, 0, len(hs))
	for _, h := range hs {
		a, err := c.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil),
		})
		if err != nil {
			return nil, err
		}
		out = append(out, certObject{label: string(a[0].Value), id: a[1].Value, der: a[2].Value})
	}
	return out, nil
}

// attachCertificates gives each key the certificate of certs that belongs to it (see above), or the
// reason why the ones with its CKA_ID or label were ignored. A failed search costs the keys their
// certificates, never the keys themselves.
func attachCertificates(c *pkcs11.Ctx, s pkcs11.SessionHandle, keys []*keyObject) {
	if len(keys) == 0 {
		return
	}
	certs, err := listCertificates(c, s)
	if err != nil {
		for _, k := range keys {
			k.certIgnored = fmt.Sprintf("certificate search failed: %v", err)
		}
		return
	}
	for _, k := range keys {
		k.cert, k.certIgnored = certificateFor(k, certs)
	}
}

// certificateFor returns the DER of the first certificate with k's CKA_ID, then of the first with its
// label, whose public key is k's; else nil and why the candidates were ignored ("" when there were none).
func certificateFor(k *keyObject, certs []certObject) (der []byte, ignored string) {
	var byID, byLabel []certObject
	for _, co := range certs {
		switch {
		case len(k.id) > 0 && bytes.Equal(co.id, k.id):
			byID = append(byID, co)
		case co.label == k.label:
			byLabel = append(byLabel, co)
		}
	}
	for _, co := range append(byID, byLabel...) {
		cert, err := x509.ParseCertificate(co.der)
		if err != nil {
			ignored = fmt.Sprintf("certificate %q is not X.509 that Go parses: %v", co.label, err)
			continue
		}
		spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil || !bytes.Equal(spki, k.pubDER) {
			ignored = fmt.Sprintf("certificate %q (subject %q) holds another public key than the key", co.label, cert.Subject.String())
			continue
		}
		return co.der, ""
	}
	return nil, ignored
}

// pickCertificate sets the certificate of key e of partition cp (index pi) from the devices that serve
// the key: the one most of them hold, config order breaking ties; devices without one do not vote, so a
// certificate written to some devices only is presented already. When no serving device is open the
// certificate is kept; when they all hold none it is dropped. Ignored certificates and disagreeing devices
// are logged once per device and certificate. Called with cl.keysMu held, after assign.
func (cl *Cluster) pickCertificate(cp *clusterPartition, e *keyEntry, held []map[string]*keyObject) {
	mask := e.mask.Load()
	if mask == 0 {
		return
	}
	var votes [][]byte
	voters := map[string]string{} // device -> short fingerprint of its certificate, for the log
	for i, d := range cl.devices {
		if mask&(1<<uint(d.idx)) == 0 || held[i] == nil {
			continue
		}
		k := held[i][e.label]
		if k == nil {
			continue
		}
		if k.certIgnored != "" {
			cl.certLogOnce(e, d.name+"\x00"+k.certIgnored, "certificate on a device ignored",
				"device", d.name, "partition", cp.name, "key", e.label, "reason", k.certIgnored)
		}
		if k.cert != nil {
			votes = append(votes, k.cert)
			voters[d.name] = certFingerprint(k.cert)
		}
	}
	best := majorityCert(votes)
	if best == nil {
		e.cert.Store(nil)
		return
	}
	e.cert.Store(&best)
	for dn, fp := range voters {
		if fp != certFingerprint(best) {
			cl.certLogOnce(e, dn+"\x00"+fp, "devices hold different certificates for a key: presenting the majority's",
				"device", dn, "partition", cp.name, "key", e.label, "device_certificate", fp, "presented", certFingerprint(best))
		}
	}
}

// certLogOnce logs a warning the first time key e sees what.
func (cl *Cluster) certLogOnce(e *keyEntry, what, msg string, args ...any) {
	if e.certLogged == nil {
		e.certLogged = map[string]bool{}
	}
	if e.certLogged[what] {
		return
	}
	e.certLogged[what] = true
	cl.log.Warn(msg, args...)
}

// majorityCert returns the certificate most of votes are, the earliest on a tie; nil when there is none.
func majorityCert(votes [][]byte) []byte {
	var best []byte
	bestN := 0
	for _, v := range votes {
		n := 0
		for _, o := range votes {
			if bytes.Equal(o, v) {
				n++
			}
		}
		if n > bestN {
			best, bestN = v, n
		}
	}
	return best
}

// certFingerprint names a certificate in logs: the start of its SHA-256.
func certFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return fmt.Sprintf("sha256:%x", sum[:8])
}
