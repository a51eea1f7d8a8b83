package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// p11Admin runs pkcs11-tool through the stock p11-kit-client.so against a running sidecar's PKCS#11 door.
type p11Admin struct {
	module, socket, dir string
}

// tool runs pkcs11-tool (as uid when uid >= 0, with setpriv) and returns its output and error.
func (p *p11Admin) tool(t *testing.T, uid int, args ...string) (string, error) {
	t.Helper()
	name, full := "pkcs11-tool", append([]string{"--module", p.module}, args...)
	if uid >= 0 {
		name, full = "setpriv", append([]string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(p11AdminGID), "--clear-groups", "pkcs11-tool"}, full...)
	}
	cmd := exec.Command(name, full...)
	cmd.Env, cmd.Dir = append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+p.socket), p.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must is tool as this process's uid, failing the test on an error.
func (p *p11Admin) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := p.tool(t, -1, args...)
	require.NoError(t, err, "pkcs11-tool %s:\n%s", strings.Join(args, " "), out)
	return out
}

func (p *p11Admin) path(name string) string { return filepath.Join(p.dir, name) }

const p11AdminGID, p11AppUID = 4252, 4251

// TestBinaryPKCS11KeyAdmin: through `hsm-ha-proxy serve`'s PKCS#11 door and the stock p11-kit-client.so, an
// admin client (clients: admin: true, matched by its uid) makes EC and RSA key pairs with pkcs11-tool
// --keypairgen — each device then holds the identical public key, read from the device itself —, signs with
// them (verified with the Go standard library), writes a certificate that lands on every device and is
// presented, and destroys a key, which leaves every device. A client without admin is refused.
func TestBinaryPKCS11KeyAdmin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs SoftHSM devices")
	}
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		t.Skip(err)
	}
	if tools.PKCS11Tool == "" {
		t.Skip("pkcs11-tool (opensc) is not installed")
	}
	bin := buildBinary(t)
	topo := harnesstest.Start(t, softhsmtest.Options{Keys: []softhsmtest.KeySpec{}})
	sockDir, err := os.MkdirTemp("", "hp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	require.NoError(t, os.Chmod(sockDir, 0o711)) // the non-admin uid reaches the socket (mode 0660, group p11AdminGID)
	p := &p11Admin{module: tools.P11KitClient, socket: filepath.Join(sockDir, "pkcs11.sock"), dir: t.TempDir()}
	require.NoError(t, os.Chmod(p.dir, 0o777))
	cfgPath := filepath.Join(topo.Dir, "sidecar.yaml")
	require.NoError(t, topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
		ServerYAML: fmt.Sprintf("listen: unix://%s\npkcs11: unix://%s\npkcs11_group: %q", filepath.Join(sockDir, "proxy.sock"), p.socket,
			strconv.Itoa(p11AdminGID)),
		ClientsYAML: fmt.Sprintf("- {name: ops, unix_uid: %d, partitions: [payments], admin: true}\n- {name: app, unix_uid: %d, partitions: [payments]}",
			os.Getuid(), p11AppUID),
		// The harness's p11-kit 0.24 devices cannot carry CKM_AES_KEY_WRAP_PAD (docs/keys.md).
		PartitionYAML: "key_replication: import",
		// A creation succeeds without a device that is down, and this test reads every device: probes that
		// do not call a device down for being slow on a loaded host.
		PolicyYAML: "health: {interval: 500ms, down_interval: 200ms, timeout: 5s, fall: 10}",
	}))
	_, _, stderr := startServe(t, bin, cfgPath)
	require.Eventually(t, func() bool {
		out, _ := p.tool(t, -1, "-L")
		return strings.Contains(out, "token label        : payments")
	}, 30*time.Second, 50*time.Millisecond, "the PKCS#11 door serves")

	tok := []string{"--token-label", "payments"}
	out := p.must(t, "--token-label", "payments", "-M")
	assert.Contains(t, out, "ECDSA-KEY-PAIR-GEN", "an admin client sees the key-pair generation mechanisms")
	assert.Contains(t, out, "RSA-PKCS-KEY-PAIR-GEN")

	pubs := map[string]crypto.PublicKey{}
	for _, k := range []struct{ label, id, keyType string }{{"p11-ec", "0a0b", "EC:prime256v1"}, {"p11-rsa", "0c", "rsa:2048"}} {
		out := p.must(t, append(tok, "--keypairgen", "--key-type", k.keyType, "--label", k.label, "--id", k.id)...)
		assert.Contains(t, out, "Key pair generated")
		assert.Contains(t, out, "ID:         "+k.id, "the template's CKA_ID")
		ref := devicePub(t, topo.Devices[0], k.label)
		require.NotNil(t, ref, "%s on %s", k.label, topo.Devices[0].Name)
		for _, d := range topo.Devices[1:] {
			require.Equal(t, ref, devicePub(t, d, k.label), "%s: the same public key on %s, read from the device", k.label, d.Name)
		}
		p.must(t, append(tok, "--read-object", "--type", "pubkey", "--label", k.label, "-o", p.path(k.label+".der"))...)
		door, err := os.ReadFile(p.path(k.label + ".der"))
		require.NoError(t, err)
		require.Equal(t, ref, door, "the door presents the devices' public key")
		pubs[k.label], err = x509.ParsePKIXPublicKey(ref)
		require.NoError(t, err)
	}
	t.Run("signatures through the door verify", func(t *testing.T) { testDoorSigns(t, p, pubs) })
	t.Run("a certificate lands on every device and is presented", func(t *testing.T) { testDoorCertificate(t, p, topo, pubs["p11-ec"]) })
	t.Run("a client without admin is refused", func(t *testing.T) { testDoorNotAdmin(t, p, topo) })

	t.Run("p11tool renames a key", func(t *testing.T) { testDoorRename(t, p, topo) })

	p.must(t, append(tok, "--delete-object", "--type", "privkey", "--label", "p11-ec")...)
	for _, d := range topo.Devices {
		assert.Nil(t, devicePub(t, d, "p11-ec"), "the key left %s", d.Name)
	}
	out = p.must(t, append(tok, "-O")...)
	assert.NotContains(t, out, "p11-ec")
	assert.Contains(t, out, "p11-rsa-2")
	logs := stderr.String()
	assert.Contains(t, logs, `action=generate who="pkcs11 client ops (uid=`, "the audit line names the PKCS#11 client")
	assert.Contains(t, logs, "action=destroy")
}

// testDoorSigns: pkcs11-tool signs with the first private key unless given --id, so each names its key.
func testDoorSigns(t *testing.T, p *p11Admin, pubs map[string]crypto.PublicKey) {
	digest := sha256.Sum256([]byte("signed through the PKCS#11 door by a key made through it"))
	require.NoError(t, os.WriteFile(p.path("digest"), digest[:], 0o644))
	p.must(t, "--token-label", "payments", "--sign", "-m", "ECDSA", "--id", "0a0b", "-i", p.path("digest"), "-o", p.path("ec.sig"))
	sig, err := os.ReadFile(p.path("ec.sig"))
	require.NoError(t, err)
	require.Len(t, sig, 64)
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	assert.True(t, ecdsa.Verify(pubs["p11-ec"].(*ecdsa.PublicKey), digest[:], r, s), "ECDSA signature verifies")

	p.must(t, "--token-label", "payments", "--sign", "-m", "RSA-PKCS", "--id", "0c", "-i", p.path("digest"), "-o", p.path("rsa.sig"))
	sig, err = os.ReadFile(p.path("rsa.sig"))
	require.NoError(t, err)
	// RSA-PKCS over a bare digest: the signature of the digest itself (no DigestInfo), crypto.Hash(0).
	assert.NoError(t, rsa.VerifyPKCS1v15(pubs["p11-rsa"].(*rsa.PublicKey), 0, digest[:], sig), "RSA signature verifies")
}

func testDoorCertificate(t *testing.T, p *p11Admin, topo *softhsmtest.Topology, pub crypto.PublicKey) {
	ca, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4711), Subject: pkix.Name{CommonName: "p11-ec"},
		Issuer: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &x509.Certificate{Subject: pkix.Name{CommonName: "test CA"}}, pub, ca)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p.path("cert.der"), der, 0o644))
	p.must(t, "--token-label", "payments", "--write-object", p.path("cert.der"), "--type", "cert", "--id", "0a0b", "--label", "p11-ec")
	for _, d := range topo.Devices {
		assert.Equal(t, der, harnesstest.DeviceObject(t, d, "payments", "cert", "p11-ec"), "the certificate on %s, read from the device", d.Name)
	}
	out := p.must(t, "--token-label", "payments", "-O")
	assert.Contains(t, out, "Certificate Object")
	assert.Contains(t, out, "subject:    DN: CN=p11-ec")
	p.must(t, "--token-label", "payments", "--read-object", "--type", "cert", "--id", "0a0b", "-o", p.path("door.crt"))
	got, err := os.ReadFile(p.path("door.crt"))
	require.NoError(t, err)
	assert.Equal(t, der, got, "the door presents the certificate")
}

func testDoorNotAdmin(t *testing.T, p *p11Admin, topo *softhsmtest.Topology) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a tool as another uid (the front end's tests refuse a non-admin table without it)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv is not installed")
	}
	tok := []string{"--token-label", "payments"}
	out, err := p.tool(t, p11AppUID, append(tok, "-O")...)
	require.NoError(t, err, out)
	assert.Contains(t, out, "p11-rsa", "the non-admin client uses the partition")
	out, err = p.tool(t, p11AppUID, append(tok, "-M")...)
	require.NoError(t, err, out)
	assert.NotContains(t, out, "KEY-PAIR-GEN", "no key-pair generation mechanism is listed to it")
	out, err = p.tool(t, p11AppUID, append(tok, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "app-key")...)
	assert.Error(t, err)
	assert.Contains(t, out, "Generate EC key mechanism", "pkcs11-tool finds no generation mechanism")
	out, err = p.tool(t, p11AppUID, append(tok, "--keypairgen", "-m", "ECDSA-KEY-PAIR-GEN", "--key-type", "EC:prime256v1", "--label", "app-key")...)
	assert.Error(t, err)
	assert.Contains(t, out, "CKR_TOKEN_WRITE_PROTECTED")
	out, err = p.tool(t, p11AppUID, append(tok, "--delete-object", "--type", "privkey", "--label", "p11-rsa")...)
	assert.Error(t, err)
	assert.Contains(t, out, "CKR_TOKEN_WRITE_PROTECTED")
	for _, d := range topo.Devices {
		assert.NotNil(t, devicePub(t, d, "p11-rsa"), "the key stays on %s", d.Name)
		assert.Nil(t, devicePub(t, d, "app-key"))
	}
}

func testDoorRename(t *testing.T, p *p11Admin, topo *softhsmtest.Topology) {
	ref := devicePub(t, topo.Devices[0], "p11-rsa")
	require.NotNil(t, ref)
	cmd := exec.Command("p11tool", "--provider", p.module, "--set-label", "p11-rsa-2", "pkcs11:token=payments;object=p11-rsa;type=private")
	cmd.Env = append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+p.socket)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "p11tool --set-label:\n%s", out)
	for _, d := range topo.Devices {
		assert.Equal(t, ref, devicePub(t, d, "p11-rsa-2"), "renamed on %s", d.Name)
		assert.Nil(t, devicePub(t, d, "p11-rsa"), "the old label is gone from %s", d.Name)
	}
}
