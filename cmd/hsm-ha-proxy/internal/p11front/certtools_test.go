package p11front

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestCertificatesThroughTools: the certificates on the devices reach unmodified tools through the stock
// p11-kit-client.so as certificate objects beside the keys.
func TestCertificatesThroughTools(t *testing.T) {
	needTool(t, "pkcs11-tool")
	d := startDevicesWith(t, true)
	f := startFront(t, ClusterBackend(d.cl), fakeAuth{os.Getuid(): {"payments", "ledger"}}, d.cl.Config().PartitionNames())
	e := newToolEnv(t, f.socket, d.keys)

	out := e.p11(t, "--token-label", "payments", "-O")
	assert.Equal(t, 3, strings.Count(out, "Certificate Object"), out)
	assert.Equal(t, 3, strings.Count(out, "Private Key Object"), out)
	for _, l := range []string{"rsa-key", "ec-key", "ec384-key"} {
		assert.Equal(t, 3, strings.Count(out, "label:      "+l+"\n"), "private key, public key and certificate of %s:\n%s", l, out)
		assert.Contains(t, out, "subject:    DN: CN="+l, out)
	}
	assert.NotContains(t, out, "ed-key", "Ed25519 keys are not presented, nor their certificates")

	for id, label := range map[string]string{"01": "rsa-key", "02": "ec-key"} {
		e.p11(t, "--token-label", "ledger", "--read-object", "--type", "cert", "--id", id, "-o", e.path(label+".crt"))
		assert.Equal(t, d.certs[label], e.read(t, label+".crt"), "the devices' certificate of %s", label)
	}
}
