package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// writeCert writes a certificate for cn signed by (ca, caKey), or self-signed as a CA when ca is nil,
// and returns it with its key.
func writeCert(t *testing.T, dir, name string, serial int64, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	parent, signer := tmpl, key
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	} else {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600))
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return c, key
}

// TestReloadRotatesCertificates: what SIGHUP runs re-reads the config file and the server.tls files it
// names; a certificate replaced on disk is what the next client sees.
func TestReloadRotatesCertificates(t *testing.T) {
	topo := softhsmtest.StartT(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus", InProcess: true}}})
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", 1, nil, nil)
	writeCert(t, dir, "server", 2, ca, caKey)
	writeCert(t, dir, "app", 3, ca, caKey)
	cfgPath := filepath.Join(dir, "sidecar.yaml")
	require.NoError(t, topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
		ServerYAML: fmt.Sprintf("listen: tcp://127.0.0.1:0\ntls: {cert: %q, key: %q, client_ca: %q}",
			filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca.pem")),
		ClientsYAML: "- {name: app, cert_name: app, partitions: [payments]}",
	}))
	cfg, err := pkcs11ha.LoadConfig(cfgPath)
	require.NoError(t, err)
	ln, err := proxy.Listen(cfg.Server)
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if c.(*tls.Conn).Handshake() == nil {
				_, _ = c.Write([]byte{'k'})
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })

	roots := x509.NewCertPool()
	roots.AddCert(ca)
	app, err := tls.LoadX509KeyPair(filepath.Join(dir, "app.pem"), filepath.Join(dir, "app-key.pem"))
	require.NoError(t, err)
	serverSerial := func() int64 {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{app}, MinVersion: tls.VersionTLS12})
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Read(make([]byte, 1))
		require.NoError(t, err)
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	require.EqualValues(t, 2, serverSerial())

	writeCert(t, dir, "server", 4, ca, caKey) // rotated on disk
	require.EqualValues(t, 2, serverSerial(), "nothing changes before the reload")
	reload(proxy.New(cfg, nil, nil, nil), ln, cfgPath, slog.New(slog.DiscardHandler))
	require.EqualValues(t, 4, serverSerial(), "the rotated certificate after the reload")
}
