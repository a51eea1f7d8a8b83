package pkcs11ha

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// Certificates are optional company for keys: applications that find keys through their certificate
// (Java's SunPKCS11 KeyStore lists a private key only when a certificate with its CKA_ID is on the token)
// need them, and the cluster passes on the one the devices hold. A certificate belongs to a key when it is
// an X.509 certificate object with the key's CKA_ID (or, failing that, its CKA_LABEL) and the key's public
// key; one with another public key is ignored, and the cluster logs that once.

// pickCertificate sets the certificate of key e of partition cp (index pi) from the devices that serve
// the key: the one most of them hold, config order breaking ties; devices without one do not vote, so a
// certificate written to some devices only is presented already. When no serving device is open the
// certificate is kept; when they all hold none it is dropped. Ignored certificates and disagreeing devices
// are logged once per device and certificate. Called with cl.keysMu held, after assign.
func (cl *Cluster) pickCertificate(cp *clusterPartition, e *keyEntry, held []map[string]*devicebackend.KeyObject) {
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
		if k.CertIgnored != "" {
			cl.certLogOnce(e, d.name+"\x00"+k.CertIgnored, "certificate on a device ignored",
				"device", d.name, "partition", cp.name, "key", e.label, "reason", k.CertIgnored)
		}
		if k.Cert != nil {
			votes = append(votes, k.Cert)
			voters[d.name] = certFingerprint(k.Cert)
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
