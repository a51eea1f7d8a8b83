package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/testcerts"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// TestReloadRotatesCertificates: what SIGHUP runs re-reads the config file and the server.tls files it
// names; a certificate replaced on disk is what the next client sees.
func TestReloadRotatesCertificates(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus", InProcess: true}}})
	dir := t.TempDir()
	ca := testcerts.NewCA(t, dir, "ca")
	srvCert, srvKey := ca.ServerCert(t)
	appCert, appKey := ca.Issue(t, "app", nil)
	cfgPath := filepath.Join(dir, "sidecar.yaml")
	require.NoError(t, topo.WriteConfig(cfgPath, softhsmtest.ConfigOptions{
		ServerYAML: fmt.Sprintf("listen: tcp://127.0.0.1:0\ntls: {cert: %q, key: %q, client_ca: %q}",
			srvCert, srvKey, ca.PEMPath),
		ClientsYAML: "- {name: app, cert_name: app, partitions: [payments]}",
	}))
	cfg, err := sidecarconfig.Load(cfgPath)
	require.NoError(t, err)
	ln, err := proxy.Listen(cfg.Server)
	require.NoError(t, err)
	srv := proxy.New(cfg, nil, nil, nil) // /healthz needs no cluster
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })

	tc := testcerts.ClientTLS(t, ca, appCert, appKey)
	serverSerial := func() string {
		// A fresh connection each time: the reload affects new connections only.
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
		resp, err := hc.Get("https://" + ln.Addr().String() + "/healthz")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		return resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	require.Equal(t, testcerts.SerialOf(t, srvCert).String(), serverSerial())

	// Rotate on disk: a new certificate under the file names the config gives.
	newCert, newKey := ca.ServerCert(t)
	for from, to := range map[string]string{newCert: srvCert, newKey: srvKey} {
		require.NoError(t, os.Rename(from, to))
	}
	rotated := testcerts.SerialOf(t, srvCert).String()
	require.NotEqual(t, rotated, serverSerial(), "nothing changes before the reload")
	reload(srv, nil, ln, cfgPath, slog.New(slog.DiscardHandler))
	require.Equal(t, rotated, serverSerial(), "the rotated certificate after the reload")
}
