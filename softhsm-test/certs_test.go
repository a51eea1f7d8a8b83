package softhsmtest

import (
	"crypto/x509"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCertificatesOption: with Options.Certificates every token holds, beside each key it holds, one
// X.509 certificate object with the key's label and id, self-signed for that device's key with CN = label;
// without it, no certificate objects at all.
func TestCertificatesOption(t *testing.T) {
	if tools, err := LookupTools(); err == nil && tools.PKCS11Tool == "" {
		t.Skip("pkcs11-tool (opensc) is not installed")
	}
	devices := []DeviceSpec{
		{Name: "dev-a", Region: "eastus", InProcess: true},
		{Name: "dev-b", Region: "eastus", InProcess: true, DifferentKeys: []string{"ec-key"}, MissingKeys: []string{"rsa-key"}},
		{Name: "eastus-1", Region: "eastus"},
	}
	topo := startT(t, Options{Devices: devices, Certificates: true})
	require.Len(t, topo.Certificates, len(topo.KeySpecs))
	for _, d := range topo.Devices {
		p := loadModule(t, d)
		for _, part := range topo.Partitions {
			sh, err := openSession(p, part.TokenLabel)
			require.NoError(t, err)
			for _, ks := range topo.KeySpecs {
				hs, err := findObjects(p, sh, pkcs11.CKO_CERTIFICATE, ks.Label)
				require.NoError(t, err)
				key, held := d.Keys[ks.Label]
				if !held {
					assert.Empty(t, hs, "%s/%s/%s: no key, no certificate", d.Name, part.Name, ks.Label)
					continue
				}
				require.Len(t, hs, 1, "%s/%s/%s", d.Name, part.Name, ks.Label)
				a, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
					pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil),
					pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, nil),
				})
				require.NoError(t, err)
				assert.Equal(t, ks.ID, a[0].Value)
				assert.Equal(t, d.Certificates[ks.Label], a[1].Value, "%s/%s/%s", d.Name, part.Name, ks.Label)
				assert.Equal(t, []byte{pkcs11.CKC_X_509, 0, 0, 0, 0, 0, 0, 0}, a[2].Value)
				cert, err := x509.ParseCertificate(a[1].Value)
				require.NoError(t, err)
				assert.Equal(t, ks.Label, cert.Subject.CommonName)
				assert.Equal(t, key.Public(), cert.PublicKey, "%s/%s/%s: the certificate is for the device's key", d.Name, part.Name, ks.Label)
				require.NoError(t, cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature), "self-signed")
			}
			require.NoError(t, p.CloseSession(sh))
		}
	}
	assert.NotEqual(t, topo.Certificates["ec-key"], topo.Device("dev-b").Certificates["ec-key"])

	plain := startT(t, Options{Devices: devices[:1]})
	assert.Empty(t, plain.Certificates)
	p := loadModule(t, plain.Devices[0])
	sh, err := openSession(p, "payments")
	require.NoError(t, err)
	hs, err := findObjects(p, sh, pkcs11.CKO_CERTIFICATE, "ec-key")
	require.NoError(t, err)
	assert.Empty(t, hs, "certificates are opt-in")
}
