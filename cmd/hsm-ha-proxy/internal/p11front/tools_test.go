package p11front

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// toolEnv runs the stock tools against one front end through p11-kit-client.so.
type toolEnv struct {
	module string   // p11-kit-client.so
	env    []string // P11_KIT_SERVER_ADDRESS and the module path for OpenSSL's engine
	dir    string
	keys   map[string]crypto.Signer
}

func newToolEnv(t *testing.T, socket string, keys map[string]crypto.Signer) *toolEnv {
	module := clientModule(t)
	e := &toolEnv{module: module, dir: t.TempDir(), keys: keys,
		env: append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+socket, "PKCS11_MODULE_PATH="+module)}
	for label, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k.Public())
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(e.path(label+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600))
	}
	return e
}

func (e *toolEnv) path(name string) string { return filepath.Join(e.dir, name) }

// run runs a program with the environment; it returns the combined output and fails the test on a
// non-zero exit unless mayFail.
func (e *toolEnv) run(t *testing.T, mayFail bool, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env, cmd.Dir = e.env, e.dir
	out, err := cmd.CombinedOutput()
	if !mayFail {
		require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	}
	return string(out), err
}

// p11 runs pkcs11-tool with the client module.
func (e *toolEnv) p11(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := e.run(t, false, "pkcs11-tool", append([]string{"--module", e.module}, args...)...)
	return out
}

func (e *toolEnv) write(t *testing.T, name string, b []byte) string {
	require.NoError(t, os.WriteFile(e.path(name), b, 0o600))
	return e.path(name)
}

func (e *toolEnv) read(t *testing.T, name string) []byte {
	b, err := os.ReadFile(e.path(name))
	require.NoError(t, err)
	return b
}

func needTool(t *testing.T, name string) {
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed", name)
	}
}

// TestStockTools drives the cluster's SoftHSM devices through the front end with unmodified tools and the
// stock p11-kit-client.so, and verifies every signature independently.
func TestStockTools(t *testing.T) {
	d := startDevices(t)
	f := startFront(t, ClusterBackend(d.cl), fakeAuth{os.Getuid(): {"payments", "ledger"}}, d.cl.Config().PartitionNames())
	e := newToolEnv(t, f.socket, d.keys)
	msg := []byte("signed by an unmodified tool")
	digest := sha256.Sum256(msg)
	e.write(t, "msg", msg)
	e.write(t, "digest", digest[:])
	t.Run("pkcs11-tool lists the granted tokens and their keys", func(t *testing.T) { testList(t, e) })
	t.Run("pkcs11-tool signs", func(t *testing.T) { testPkcs11ToolSign(t, e, digest[:]) })
	t.Run("pkcs11-tool decrypts an OpenSSL ciphertext", func(t *testing.T) { testPkcs11ToolDecrypt(t, e) })
	t.Run("pkcs11-tool --test", func(t *testing.T) {
		out := e.p11(t, "--token-label", "payments", "--test", "--login", "--pin", "pin-7d3f9e")
		assert.Contains(t, out, "No errors")
		assert.Contains(t, out, "RSA-PKCS-OAEP")
	})
	t.Run("OpenSSL pkcs11 engine", func(t *testing.T) { testOpenSSLEngine(t, e, msg) })
	t.Run("GnuTLS p11tool --test-sign", func(t *testing.T) {
		needTool(t, "p11tool")
		for _, label := range []string{"rsa-key", "ec-key"} {
			out, _ := e.run(t, false, "p11tool", "--provider", e.module, "--test-sign", "pkcs11:token=payments;object="+label)
			assert.Contains(t, out, "Verifying against public key in the token... ok", label)
		}
	})
	assert.Contains(t, f.logs.String(), "device=eastus-", "the access log names the device that signed")
	assert.NotContains(t, f.logs.String(), "pin-7d3f9e", "the PIN the tool passed is never logged")
}

func testList(t *testing.T, e *toolEnv) {
	out := e.p11(t, "-L")
	labels := regexp.MustCompile(`token label\s*:\s*(\S+)`).FindAllStringSubmatch(out, -1)
	var got []string
	for _, m := range labels {
		got = append(got, m[1])
	}
	assert.ElementsMatch(t, []string{"payments", "ledger"}, got)

	out = e.p11(t, "--token-label", "payments", "-O")
	assert.Equal(t, 3, strings.Count(out, "Private Key Object"), out)
	assert.Equal(t, 3, strings.Count(out, "Public Key Object"), out)
	for _, l := range []string{"rsa-key", "ec-key", "ec384-key"} {
		assert.Equal(t, 2, strings.Count(out, "label:      "+l+"\n"), l)
	}
	assert.NotContains(t, out, "ed-key", "Ed25519 keys are not presented")

	for id, label := range map[string]string{"01": "rsa-key", "02": "ec-key"} {
		e.p11(t, "--token-label", "payments", "--read-object", "--type", "pubkey", "--id", id, "-o", e.path(label+".der"))
		want, err := x509.MarshalPKIXPublicKey(e.keys[label].Public())
		require.NoError(t, err)
		assert.Equal(t, want, e.read(t, label+".der"), "the token's public key is the devices' key")
	}
}

func testPkcs11ToolSign(t *testing.T, e *toolEnv, digest []byte) {
	e.p11(t, "--token-label", "payments", "--sign", "-m", "ECDSA", "--id", "02", "-i", e.path("digest"), "-o", e.path("ec.sig"))
	require.NoError(t, verifyRaw(e.keys["ec-key"].Public().(*ecdsa.PublicKey), digest, e.read(t, "ec.sig")))

	e.p11(t, "--token-label", "payments", "--sign", "-m", "RSA-PKCS-PSS", "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256",
		"--salt-len", "32", "--id", "01", "-i", e.path("digest"), "-o", e.path("pss.sig"))
	require.NoError(t, rsa.VerifyPSS(e.keys["rsa-key"].Public().(*rsa.PublicKey), crypto.SHA256, digest, e.read(t, "pss.sig"),
		&rsa.PSSOptions{SaltLength: 32}))

	e.p11(t, "--token-label", "ledger", "--sign", "-m", "SHA256-RSA-PKCS", "--id", "01", "-i", e.path("msg"), "-o", e.path("pkcs1.sig"))
	require.NoError(t, rsa.VerifyPKCS1v15(e.keys["rsa-key"].Public().(*rsa.PublicKey), crypto.SHA256, digest, e.read(t, "pkcs1.sig")))
}

func testPkcs11ToolDecrypt(t *testing.T, e *toolEnv) {
	secret := []byte("a secret for the HSM")
	e.write(t, "secret", secret)
	tests := []struct {
		name      string
		opensslMD []string // OAEP digest options of openssl pkeyutl
		toolMD    []string
	}{
		{"OAEP SHA-1 (native on SoftHSM)", nil, []string{"--hash-algorithm", "SHA-1", "--mgf", "MGF1-SHA1"}},
		{"OAEP SHA-256 (policy.oaep_fallback: SoftHSM does SHA-1 only)",
			[]string{"-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"}, []string{"--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(e.path("pt"))
			args := append([]string{"pkeyutl", "-encrypt", "-pubin", "-inkey", e.path("rsa-key.pem"), "-in", e.path("secret"),
				"-out", e.path("ct"), "-pkeyopt", "rsa_padding_mode:oaep"}, tt.opensslMD...)
			e.run(t, false, "openssl", args...)
			e.p11(t, append([]string{"--token-label", "payments", "--decrypt", "-m", "RSA-PKCS-OAEP", "--id", "01",
				"-i", e.path("ct"), "-o", e.path("pt")}, tt.toolMD...)...)
			assert.Equal(t, secret, e.read(t, "pt"))
		})
	}
}

func testOpenSSLEngine(t *testing.T, e *toolEnv, msg []byte) {
	if out, err := e.run(t, true, "openssl", "engine", "pkcs11"); err != nil {
		t.Skipf("OpenSSL's pkcs11 engine (libengine-pkcs11-openssl) is not available: %s", out)
	}
	digest := sha256.Sum256(msg)
	for _, label := range []string{"rsa-key", "ec-key"} {
		sig := label + ".engine.sig"
		e.run(t, false, "openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine",
			"-sign", "pkcs11:token=payments;object="+label+";type=private", "-out", e.path(sig), e.path("msg"))
		out, _ := e.run(t, false, "openssl", "dgst", "-sha256", "-verify", e.path(label+".pem"), "-signature", e.path(sig), e.path("msg"))
		assert.Contains(t, out, "Verified OK", label)
		switch pub := e.keys[label].Public().(type) {
		case *rsa.PublicKey:
			assert.NoError(t, rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], e.read(t, sig)))
		case *ecdsa.PublicKey:
			assert.True(t, ecdsa.VerifyASN1(pub, digest[:], e.read(t, sig)))
		}
	}
}
