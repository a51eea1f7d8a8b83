package p11front

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pythonWithPyKCS11 is the Debian python3 that has python3-pykcs11 (a python earlier on PATH may not).
const pythonWithPyKCS11 = "/usr/bin/python3"

// TestSecretKeysTools: HMAC sign and verify through the stock p11-kit-client.so with tools no one here
// wrote — OpenSC's pkcs11-tool and Python's PyKCS11 — each MAC checked with crypto/hmac against the key
// value the harness imported; a wrong MAC fails verification with CKR_SIGNATURE_INVALID.
func TestSecretKeysTools(t *testing.T) {
	d, f := startSecretDevices(t)
	e := newToolEnv(t, f.socket, nil)
	msg := []byte("a token MACed by an unmodified tool")
	e.write(t, "msg", msg)
	t.Run("pkcs11-tool", func(t *testing.T) {
		needTool(t, "pkcs11-tool")
		out := e.p11(t, "--token-label", "payments", "-O")
		assert.Equal(t, 4, strings.Count(out, "Secret Key Object"), out)
		out = e.p11(t, "--token-label", "payments", "-M")
		assert.Contains(t, out, "SHA256-HMAC")

		for _, tt := range []struct{ mech, id, label string }{
			{"SHA256-HMAC", "11", "hmac-key"}, {"SHA384-HMAC", "13", "hmac384-key"}, {"SHA512-HMAC", "12", "generic-key"},
		} {
			e.p11(t, "--token-label", "payments", "--sign", "--mechanism", tt.mech, "--id", tt.id,
				"--input-file", e.path("msg"), "--output-file", e.path(tt.label+".mac"))
			mac := e.read(t, tt.label+".mac")
			want := map[string][]byte{
				"hmac-key":    goHMAC(sha256.New, d.secrets["hmac-key"], msg),
				"hmac384-key": goHMAC(sha512.New384, d.secrets["hmac384-key"], msg),
				"generic-key": goHMAC(sha512.New, d.secrets["generic-key"], msg),
			}[tt.label]
			assert.Equal(t, want, mac, "%s: pkcs11-tool's MAC is crypto/hmac's with the key's value", tt.mech)

			out := e.p11(t, "--token-label", "payments", "--verify", "--mechanism", tt.mech, "--id", tt.id,
				"--input-file", e.path("msg"), "--signature-file", e.path(tt.label+".mac"))
			assert.Contains(t, out, "Signature is valid", tt.mech)
			bad := bytes.Clone(mac)
			bad[len(bad)-1] ^= 1
			e.write(t, tt.label+".bad", bad)
			out, err := e.run(t, true, "pkcs11-tool", "--module", e.module, "--token-label", "payments", "--verify",
				"--mechanism", tt.mech, "--id", tt.id, "--input-file", e.path("msg"), "--signature-file", e.path(tt.label+".bad"))
			// pkcs11-tool 0.23 says "Invalid signature" for CKR_SIGNATURE_INVALID alone; any other code is
			// "error: PKCS11 function C_Verify failed: rv = CKR_..." and a non-zero exit.
			assert.Contains(t, out, "Invalid signature", "%s: %v", tt.mech, err)
			assert.NotContains(t, out, "Signature is valid", tt.mech)
			assert.NotContains(t, out, "failed", tt.mech)
			e.write(t, tt.label+".short", mac[:len(mac)-1])
			out, _ = e.run(t, true, "pkcs11-tool", "--module", e.module, "--token-label", "payments", "--verify",
				"--mechanism", tt.mech, "--id", tt.id, "--input-file", e.path("msg"), "--signature-file", e.path(tt.label+".short"))
			assert.Contains(t, out, "CKR_SIGNATURE_LEN_RANGE", "%s: a truncated MAC", tt.mech)
		}
	})
	t.Run("PyKCS11", func(t *testing.T) {
		if out, err := exec.Command(pythonWithPyKCS11, "-c", "import PyKCS11").CombinedOutput(); err != nil {
			t.Skipf("PyKCS11 (Debian python3-pykcs11) is not available: %s", out)
		}
		script := e.write(t, "hmac.py", []byte(pyHMAC))
		out, _ := e.run(t, false, pythonWithPyKCS11, script, e.module, "payments", "hmac-key", hex.EncodeToString(msg))
		lines := strings.Fields(out)
		require.Len(t, lines, 4, out)
		assert.Equal(t, hex.EncodeToString(goHMAC(sha256.New, d.secrets["hmac-key"], msg)), lines[0],
			"PyKCS11's MAC is crypto/hmac's with the key's value")
		assert.Equal(t, []string{"verify=True", "verify-wrong=False", "verify-wrong-rv=CKR_SIGNATURE_INVALID"}, lines[1:])
	})
	requireDevicesHealthy(t, d)
}

// pyHMAC signs data (hex) with the secret key labelled argv[3] of token argv[2] through module argv[1]
// (CKM_SHA256_HMAC), verifies the MAC, then a wrong one: PyKCS11's verify answers False for
// CKR_SIGNATURE_INVALID and raises for any other error; the low-level call shows the code itself.
const pyHMAC = `import sys
import PyKCS11
from PyKCS11 import LowLevel

module, token, label, data = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == token][0]
session = lib.openSession(slot)
key = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY), (PyKCS11.CKA_LABEL, label)])[0]
mech = PyKCS11.Mechanism(PyKCS11.CKM_SHA256_HMAC, None)
mac = bytes(session.sign(key, data, mech))
print(mac.hex())
print("verify=%s" % session.verify(key, data, mac, mech))
wrong = bytes([mac[0] ^ 1]) + mac[1:]
print("verify-wrong=%s" % session.verify(key, data, wrong, mech))
m = LowLevel.CK_MECHANISM()
m.mechanism = PyKCS11.CKM_SHA256_HMAC
rv = lib.lib.C_VerifyInit(session.session, m, key)
assert rv == PyKCS11.CKR_OK, rv
rv = lib.lib.C_Verify(session.session, PyKCS11.ckbytelist(data), PyKCS11.ckbytelist(wrong))
print("verify-wrong-rv=%s" % PyKCS11.CKR[rv])
session.closeSession()
`
