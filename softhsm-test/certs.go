package softhsmtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// With Options.Certificates every imported key gets a certificate object beside it: a self-signed X.509
// certificate for the key (CN = the key's label, same CKA_LABEL and CKA_ID), written into the token with
// pkcs11-tool (Debian package opensc), since softhsm2-util imports keys only. That is what an operator does
// on a real HSM, and what applications that find keys through certificates (Java's SunPKCS11) need.

// certCache holds one certificate per test key, made once per process like the keys, so that token
// images with certificates stay cacheable.
var certCache struct {
	mu sync.Mutex
	m  map[string]*cachedCert
}

type cachedCert struct {
	once sync.Once
	der  []byte
	err  error
}

// testCert returns the process-wide self-signed certificate of testKey(kind, label, variant).
func testCert(kind, label, variant string) ([]byte, error) {
	name := kind + "\x00" + label + "\x00" + variant
	certCache.mu.Lock()
	if certCache.m == nil {
		certCache.m = make(map[string]*cachedCert)
	}
	e := certCache.m[name]
	if e == nil {
		e = &cachedCert{}
		certCache.m[name] = e
	}
	certCache.mu.Unlock()
	e.once.Do(func() {
		key, err := testKey(kind, label, variant)
		if err != nil {
			e.err = err
			return
		}
		e.der, e.err = SelfSignedCertificate(key, label)
	})
	return e.der, e.err
}

// SelfSignedCertificate returns the DER of a self-signed X.509 certificate for key with CN = cn, a random
// serial number and ten years of validity from an hour ago.
func SelfSignedCertificate(key crypto.Signer, cn string) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)), // positive
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: certificate for %q: %w", cn, err)
	}
	return der, nil
}

// writeCertificate writes the DER certificate at derPath into the token labelled token (SoftHSM
// configuration conf) as a CKO_CERTIFICATE with CKA_LABEL label and CKA_ID id.
func writeCertificate(ctx context.Context, tools Tools, conf, token, pin, derPath, label string, id []byte) error {
	if tools.PKCS11Tool == "" {
		return fmt.Errorf("softhsmtest: Options.Certificates needs pkcs11-tool (Debian package opensc)")
	}
	// The test token's user PIN goes to pkcs11-tool's argv only, never to a log or an error.
	args := []string{"--module", tools.SoftHSMModule, "--token-label", token, "--login",
		"--pin", pin, "--write-object", derPath, "--type", "cert", "--label", label, "--id", hex.EncodeToString(id)}
	cmd := exec.CommandContext(ctx, tools.PKCS11Tool, args...)
	cmd.Env = envWith(map[string]string{"SOFTHSM2_CONF": conf})
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("softhsmtest: SOFTHSM2_CONF=%s pkcs11-tool %s: %w: %s", conf, redactPINs(args), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeCertFile writes a certificate's DER file, readable by the owner only.
func writeCertFile(path string, der []byte) error { return os.WriteFile(path, der, 0o600) }
