package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// CA is a throw-away certificate authority whose files live in Dir.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	PEMPath string // the CA certificate, PEM
	Dir     string
}

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(serial.Add(1)) }

// newKey is a fresh P-256 key and a template for CN name, valid for an hour either side of now.
func newKey(t testing.TB, name string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return key, &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
}

// NewCA makes a CA named name and writes its certificate to dir.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	key, tmpl := newKey(t, name)
	tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	p := filepath.Join(dir, name+"-ca.pem")
	require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return &CA{Cert: cert, Key: key, PEMPath: p, Dir: dir}
}

// Issue writes a client certificate for CN name and its key (a new pair of files at every call); edit
// adjusts the template (names, usages).
func (ca *CA) Issue(t testing.TB, name string, edit func(*x509.Certificate)) (certPath, keyPath string) {
	t.Helper()
	key, tmpl := newKey(t, name)
	tmpl.KeyUsage, tmpl.ExtKeyUsage = x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	file := fmt.Sprintf("%s-%s", name, tmpl.SerialNumber) // several certificates may share a CN
	certPath = filepath.Join(ca.Dir, file+".pem")
	keyPath = filepath.Join(ca.Dir, file+"-key.pem")
	require.NoError(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600))
	return certPath, keyPath
}

// ServerCert issues the sidecar's certificate for 127.0.0.1 and localhost.
func (ca *CA) ServerCert(t testing.TB) (certPath, keyPath string) {
	return ca.Issue(t, "sidecar", func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		c.DNSNames = []string{"localhost"}
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	})
}

// ClientTLS is a client config presenting certPath/keyPath (none if empty) and trusting ca.
func ClientTLS(t testing.TB, ca *CA, certPath, keyPath string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certPath != "" {
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		require.NoError(t, err)
		tc.Certificates = []tls.Certificate{c}
	}
	return tc
}

// URISAN adds a URI SAN (e.g. a SPIFFE ID) to a certificate template.
func URISAN(s string) func(*x509.Certificate) {
	return func(c *x509.Certificate) {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
}

// DNSSAN adds a DNS SAN to a certificate template.
func DNSSAN(s string) func(*x509.Certificate) {
	return func(c *x509.Certificate) { c.DNSNames = append(c.DNSNames, s) }
}

// SerialOf returns the serial number of the PEM certificate in path.
func SerialOf(t testing.TB, path string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(b)
	require.NotNil(t, blk, "%s holds no PEM block", path)
	c, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	return c.SerialNumber
}
