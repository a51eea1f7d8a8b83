package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestCertificates: the certificate objects on the devices reach KeyInfo.Certificate — found by CKA_ID or
// else by label, only with the key's public key, the majority's when the devices disagree — on real
// SoftHSM tokens written by pkcs11-tool.
func TestCertificates(t *testing.T) {
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Skipf("pkcs11-tool (opensc) is not installed: %v", err)
	}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: inProcess("dev-a", "dev-b", "dev-c")})
	ecA := selfSigned(t, topo.Keys["ec-key"], "ec-key", 1)
	ecB := selfSigned(t, topo.Keys["ec-key"], "ec-key", 2) // same key, another certificate
	wrong := selfSigned(t, topo.Keys["ec-key"], "rsa-key", 3)
	p384 := selfSigned(t, topo.Keys["ec384-key"], "ec384-key", 4)
	for _, w := range []struct {
		dev, label, id string
		der            []byte
	}{
		{"dev-a", "ec-key", "02", ecA},
		{"dev-b", "ec-key", "02", ecA},
		{"dev-c", "ec-key", "02", ecB},                                                // outvoted
		{"dev-a", "rsa-key", "01", wrong},                                             // another public key: ignored everywhere
		{"dev-b", "rsa-key", "01", wrong},                                             //
		{"dev-c", "ec384-key", "ee", p384},                                            // another CKA_ID: found by label, on one device only
		{"dev-a", "ec-key-ca", "", selfSigned(t, topo.Keys["rsa-key"], "some CA", 5)}, // belongs to no key
	} {
		writeCert(t, topo.Device(w.dev), "payments", w.label, w.id, w.der)
	}
	var logBuf softhsmtest.LogBuffer
	cl, _ := openCluster(t, topo, "", pkcs11ha.WithLogger(slog.New(slog.NewTextHandler(&logBuf, nil))))

	infos, err := cl.Keys("payments")
	require.NoError(t, err)
	got := map[string][]byte{}
	for _, ki := range infos {
		got[ki.Label] = ki.Certificate
	}
	assert.Equal(t, ecA, got["ec-key"], "the majority's certificate")
	assert.Nil(t, got["rsa-key"], "a certificate for another public key is ignored")
	assert.Equal(t, p384, got["ec384-key"], "found by label; presented from the one device that holds it")
	assert.Nil(t, got["ed-key"], "no certificate on any device")
	k, err := cl.Key(context.Background(), "payments", "ec-key")
	require.NoError(t, err)
	assert.Equal(t, ecA, k.Info().Certificate)
	ledger, err := cl.Keys("ledger")
	require.NoError(t, err)
	for _, ki := range ledger {
		assert.Nil(t, ki.Certificate, "certificates belong to their partition's token: %s", ki.Label)
	}

	logs := logBuf.String()
	for _, dev := range []string{"dev-a", "dev-b"} {
		assert.Equal(t, 1, countLines(logs, "certificate on a device ignored", "device="+dev, "key=rsa-key"),
			"an ignored certificate is logged once per device, though every device's open re-checks the keys:\n%s", logs)
	}
	assert.Equal(t, 1, countLines(logs, "devices hold different certificates", "device=dev-c", "key=ec-key"), logs)
	assert.Zero(t, countLines(logs, "devices hold different certificates", "device=dev-a"), logs)
}

// selfSigned returns a self-signed certificate for key (CN = cn) — or, as the test needs it, for key
// under another label.
func selfSigned(t *testing.T, key crypto.Signer, cn string, serial int64) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	return der
}

// writeCert writes an X.509 certificate object into a device's token with pkcs11-tool (id "" for none).
func writeCert(t *testing.T, d *softhsmtest.Device, partition, label, id string, der []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cert.der")
	require.NoError(t, os.WriteFile(path, der, 0o600))
	args := []string{"--module", d.ModulePath, "--token-label", partition, "--login", "--pin", d.PINs[partition],
		"--write-object", path, "--type", "cert", "--label", label}
	if id != "" {
		_, err := hex.DecodeString(id)
		require.NoError(t, err)
		args = append(args, "--id", id)
	}
	cmd := exec.Command("pkcs11-tool", args...)
	cmd.Env = os.Environ()
	for k, v := range d.ModuleEnv {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "pkcs11-tool --write-object: %s", out)
}

// countLines counts the lines of logs that contain every one of parts.
func countLines(logs string, parts ...string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}
