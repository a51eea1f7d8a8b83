package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
)

// Verify-after-sign (policy.verify_signatures). A fault during an RSA-CRT signature (a flipped bit in one
// of the two half-exponentiations) yields a signature from which the private key can be factored out of
// the modulus (Boneh–DeMillo–Lipton; Lenstra): Go's crypto/rsa and OpenSSL check every CRT signature before
// releasing it, and so does this library with what a device returns. A signature that does not verify is
// never returned: it is a device fault (class bad_signature), the device is taken out at once (its breaker
// opens, its monitor marks it down with the reason), and the call is retried on another device.

// Values of policy.verify_signatures.
const (
	VerifyRSA = "rsa" // RSA PKCS#1 v1.5 and RSA-PSS signatures (the default)
	VerifyAll = "all" // RSA, ECDSA and Ed25519
	VerifyOff = "off"
)

// verifies reports whether policy mode checks signatures of public key pub.
func verifies(mode string, pub crypto.PublicKey) bool {
	switch mode {
	case VerifyAll:
		return true
	case VerifyRSA:
		_, ok := pub.(*rsa.PublicKey)
		return ok
	}
	return false
}

// verifySignature checks sig (as the token returned it: raw r||s for ECDSA) over digest.
func verifySignature(pub crypto.PublicKey, digest []byte, opts crypto.SignerOpts, plan *signPlan, sig []byte) (string, bool) {
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		if _, ok := opts.(*rsa.PSSOptions); ok {
			h := opts.HashFunc()
			return "RSA-PSS", rsa.VerifyPSS(pk, h, digest, sig, &rsa.PSSOptions{SaltLength: plan.salt, Hash: h}) == nil
		}
		return "RSA PKCS#1 v1.5", rsa.VerifyPKCS1v15(pk, opts.HashFunc(), digest, sig) == nil
	case *ecdsa.PublicKey:
		n := plan.ecdsa
		if n == 0 || len(sig) != 2*n {
			return "ECDSA", false
		}
		r, s := new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])
		return "ECDSA", ecdsa.Verify(pk, digest, r, s)
	case ed25519.PublicKey:
		return "Ed25519", len(sig) == ed25519.SignatureSize && ed25519.Verify(pk, digest, sig)
	}
	return fmt.Sprintf("%T", pub), false
}

// noteBadSignature takes device m out at once when err says it returned a bad signature: it names the
// device in the error, counts it, logs it (device, partition, key; never the data) and marks the device
// down with the reason. Its breaker was opened by the failed attempt itself.
func (cl *Cluster) noteBadSignature(m int, err error) {
	var se *SignatureError
	if err == nil || !errors.As(err, &se) || se.Device != "" {
		return
	}
	d := cl.devices[m]
	se.Device = d.name
	cl.metrics.badSignatures.WithLabelValues(d.name).Inc()
	cl.log.Error("device returned a signature that does not verify: not returned, device taken out",
		"device", d.name, "partition", se.Partition, "key", se.Key, "scheme", se.Scheme)
	d.be.NoteError(se)
	if m < len(cl.monitors) {
		cl.monitors[m].MarkDown(se.Error())
	}
}
