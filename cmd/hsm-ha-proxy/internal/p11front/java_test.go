package p11front

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
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

// TestJavaSunPKCS11: Java's own PKCS#11 provider, unmodified, configured with a three-line file, lists the
// front end's keys as KeyStore entries (it pairs a private key with the certificate of the same CKA_ID) and
// signs with them; every signature is verified here against the cluster's public key.
func TestJavaSunPKCS11(t *testing.T) {
	needTool(t, "pkcs11-tool")
	java := javaHome(t)
	d := startDevicesWith(t, true)
	f := startFront(t, ClusterBackend(d.cl), fakeAuth{os.Getuid(): {"payments", "ledger"}}, d.cl.Config().PartitionNames())
	e := newToolEnv(t, f.socket, d.keys)
	// docs/pkcs11-front-end.md's configuration, with the payments token's slot (its position in the config).
	cfg := e.write(t, "pkcs11-ha.cfg", []byte(fmt.Sprintf("name = pkcs11-ha\nlibrary = %s\nslot = %d\n", e.module, slotOf(t, d, "payments"))))

	// slotListIndex = 0 is the first granted partition's token: payments here too.
	byIndex := e.write(t, "by-index.cfg", []byte(fmt.Sprintf("name = pkcs11-ha\nlibrary = %s\nslotListIndex = 0\n", e.module)))
	for _, c := range []string{cfg, byIndex} {
		began := time.Now()
		out, _ := e.run(t, false, filepath.Join(java, "keytool"), "-list", "-keystore", "NONE", "-storetype", "PKCS11",
			"-providerClass", "sun.security.pkcs11.SunPKCS11", "-providerArg", c, "-storepass", "anything")
		t.Logf("keytool -list (%s) in %v:\n%s", filepath.Base(c), time.Since(began).Round(time.Millisecond), out)
		assert.Contains(t, out, "Your keystore contains 3 entries", out)
		for _, l := range []string{"rsa-key", "ec-key", "ec384-key"} {
			assert.Regexp(t, regexp.MustCompile(`(?m)^`+l+`, PrivateKeyEntry,`), out)
		}
	}

	msg := "signed by Java through pkcs11-ha"
	src, err := filepath.Abs(filepath.Join("testdata", "Sign.java"))
	require.NoError(t, err)
	began := time.Now()
	out, _ := e.run(t, false, filepath.Join(java, "java"), src, cfg, msg, "rsa-key", "ec-key", "ec384-key")
	t.Logf("java Sign.java in %v:\n%s", time.Since(began).Round(time.Millisecond), out)
	got := parseJavaOutput(t, out)
	want := map[string][]string{
		"rsa-key":   {"PUBLIC", "SHA256withRSA", "RSASSA-PSS"},
		"ec-key":    {"PUBLIC", "SHA256withECDSA"},
		"ec384-key": {"PUBLIC", "SHA256withECDSA"},
	}
	digest := sha256.Sum256([]byte(msg))
	for alias, algs := range want {
		pub := d.keys[alias].Public()
		spki, err := x509.MarshalPKIXPublicKey(pub)
		require.NoError(t, err)
		for _, alg := range algs {
			v, ok := got[alias+" "+alg]
			if !assert.True(t, ok, "%s %s missing:\n%s", alias, alg, out) {
				continue
			}
			switch alg {
			case "PUBLIC":
				assert.Equal(t, spki, v, "%s: the certificate's public key is the cluster key's", alias)
			case "SHA256withRSA":
				assert.NoError(t, rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, digest[:], v), alias)
			case "RSASSA-PSS":
				assert.NoError(t, rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA256, digest[:], v, &rsa.PSSOptions{SaltLength: 32}), alias)
			case "SHA256withECDSA":
				assert.True(t, ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], v), alias)
			}
		}
	}
	assert.Len(t, got, 7, out)
	logs := f.logs.String()
	for _, mech := range []string{"CKM_ECDSA", "CKM_RSA_PKCS_PSS"} {
		assert.Contains(t, logs, "mechanism="+mech, "Java's signatures went through the cluster")
	}
	assert.NotContains(t, logs, "anything", "the passwords Java logged in with are never logged")
	assert.NotContains(t, logs, "any password")
}

// javaHome returns the directory of the JDK's java and keytool, or skips the test.
func javaHome(t *testing.T) string {
	t.Helper()
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("java is not installed: the Java SunPKCS11 proof needs a JDK 11+ (Debian openjdk-17-jdk-headless; make deps installs it)")
	}
	if _, err := exec.LookPath(filepath.Join(filepath.Dir(java), "keytool")); err != nil {
		t.Skipf("no keytool beside %s: install a full JDK (Debian openjdk-17-jdk-headless)", java)
	}
	return filepath.Dir(java)
}

// slotOf is the front end's slot id of a partition: its position in the config, from 1.
func slotOf(t *testing.T, d *devices, partition string) int {
	for i, p := range d.cl.Config().PartitionNames() {
		if p == partition {
			return i + 1
		}
	}
	t.Fatalf("no partition %q", partition)
	return 0
}

// parseJavaOutput reads Sign.java's "ALIAS WHAT BASE64" lines into "ALIAS WHAT" -> bytes.
func parseJavaOutput(t *testing.T, out string) map[string][]byte {
	got := map[string][]byte{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue // the JVM's own notes
		}
		b, err := base64.StdEncoding.DecodeString(f[2])
		require.NoError(t, err, line)
		got[f[0]+" "+f[1]] = bytes.Clone(b)
	}
	return got
}
