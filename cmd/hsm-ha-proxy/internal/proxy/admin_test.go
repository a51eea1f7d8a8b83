package proxy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// TestE2EKeyAdmin: over mutual TLS, a client granted admin: true creates a key on every device, signs
// with it, reads the inventory, syncs and destroys it, each change logged as an audit line; a client of
// the same partition without admin is refused every key-management call.
func TestE2EKeyAdmin(t *testing.T) {
	topo := startTopology(t, softhsmtest.Options{Keys: []softhsmtest.KeySpec{}, Devices: []softhsmtest.DeviceSpec{
		{Name: "eastus-1", Region: "eastus"}, {Name: "eastus-2", Region: "eastus"}}})
	dir := t.TempDir()
	ca := newCA(t, dir, "clients")
	srvCert, srvKey := ca.ServerCert(t)
	aCert, aKey := ca.Issue(t, "admin", uriSAN("spiffe://example.org/admin"))
	bCert, bKey := ca.Issue(t, "app", uriSAN("spiffe://example.org/app"))
	ts := startSidecar(t, topo, e2eOptions{
		part: "key_replication: import",
		clients: `
- {name: admin, cert_name: "spiffe://example.org/admin", partitions: [payments], admin: true}
- {name: app, cert_name: "spiffe://example.org/app", partitions: [payments]}`,
		server: sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", TLS: sidecarconfig.TLSConfig{Cert: srvCert, Key: srvKey, ClientCA: ca.PEMPath}},
	})
	admin := sidecarclient.DialTLS(ts.addr, clientTLS(t, ca, aCert, aKey))
	app := sidecarclient.DialTLS(ts.addr, clientTLS(t, ca, bCert, bKey))
	t.Cleanup(func() { admin.Close(); app.Close() })
	ctx := context.Background()
	req := sidecarapi.CreateKeyRequest{Label: "http-ec", Algorithm: "ec-p256"}

	_, err := app.CreateKey(ctx, "payments", req)
	requireAPIError(t, err, http.StatusForbidden, sidecarapi.CodeNotAdmin)
	_, err = app.Inventory(ctx, "payments")
	requireAPIError(t, err, http.StatusForbidden, sidecarapi.CodeNotAdmin)
	_, err = app.SyncKeys(ctx, "payments", true)
	requireAPIError(t, err, http.StatusForbidden, sidecarapi.CodeNotAdmin)
	requireAPIError(t, app.DestroyKey(ctx, "payments", "http-ec"), http.StatusForbidden, sidecarapi.CodeNotAdmin)

	created, err := admin.CreateKey(ctx, "payments", req)
	require.NoError(t, err)
	require.Equal(t, []string{"eastus-1", "eastus-2"}, created.Devices)
	require.Len(t, created.Fingerprint, 64)
	k, err := app.Key(ctx, "payments", "http-ec") // the new key serves every client of the partition
	require.NoError(t, err)
	d := hashOf(crypto.SHA256, []byte("admin"))
	sig, err := k.SignContext(ctx, d, crypto.SHA256)
	require.NoError(t, err)
	require.True(t, ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d, sig))

	_, err = admin.CreateKey(ctx, "payments", req)
	requireAPIError(t, err, http.StatusConflict, sidecarapi.CodeKeyExists)
	_, err = admin.CreateKey(ctx, "payments", sidecarapi.CreateKeyRequest{Label: "x", Algorithm: "dsa-512"})
	requireAPIError(t, err, http.StatusBadRequest, sidecarapi.CodeInvalidInput)
	_, err = admin.CreateKey(ctx, "ledger", req)
	requireAPIError(t, err, http.StatusForbidden, sidecarapi.CodeForbidden)

	inv, err := admin.Inventory(ctx, "payments")
	require.NoError(t, err)
	require.Len(t, inv.Devices, 2)
	for _, dv := range inv.Devices {
		require.Len(t, dv.Keys, 1)
		require.Equal(t, created.Fingerprint, dv.Keys[0].Fingerprint)
	}
	rep, err := admin.SyncKeys(ctx, "payments", true)
	require.NoError(t, err)
	require.Empty(t, rep.Actions)

	require.NoError(t, admin.DestroyKey(ctx, "payments", "http-ec"))
	_, err = app.Key(ctx, "payments", "http-ec")
	requireAPIError(t, err, http.StatusNotFound, sidecarapi.CodeUnknownKey)

	logs := ts.logs.String()
	for _, action := range []string{`"action":"generate"`, `"action":"destroy"`} {
		require.Contains(t, logs, action)
	}
	require.Contains(t, logs, `"who":"http client admin (cert=spiffe://example.org/admin)"`)
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"msg":"audit"`) {
			require.NotContains(t, line, topo.Partitions[0].PIN, "no PIN in an audit line")
		}
	}
}
