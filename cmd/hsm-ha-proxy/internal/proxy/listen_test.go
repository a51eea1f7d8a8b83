package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/testcerts"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

func listenUnixT(t *testing.T, path string) (net.Listener, error) {
	t.Helper()
	ln, err := Listen(sidecarconfig.ServerConfig{Listen: "unix://" + path})
	if err == nil {
		t.Cleanup(func() { ln.Close() })
	}
	return ln, err
}

func TestListenUnix(t *testing.T) {
	t.Run("mode 0600, removed on close", func(t *testing.T) {
		dir := shortTempDir(t)
		path := filepath.Join(dir, "s.sock")
		ln, err := listenUnixT(t, path)
		require.NoError(t, err)
		fi, err := os.Lstat(path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		assert.NotZero(t, fi.Mode()&os.ModeSocket)
		assert.Equal(t, path, ln.Addr().String())
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		assert.Len(t, ents, 1, "the private directory the socket was bound in is gone")

		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		c.Close()
		require.NoError(t, ln.Close())
		_, err = os.Lstat(path)
		assert.True(t, os.IsNotExist(err))
	})
	t.Run("a stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(shortTempDir(t), "s.sock")
		old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		require.NoError(t, err)
		old.SetUnlinkOnClose(false)
		require.NoError(t, old.Close()) // the file stays, nothing answers: a crashed sidecar's socket
		_, err = listenUnixT(t, path)
		require.NoError(t, err)
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		c.Close()
	})
	t.Run("a live socket is not replaced", func(t *testing.T) {
		path := filepath.Join(shortTempDir(t), "s.sock")
		live, err := net.Listen("unix", path)
		require.NoError(t, err)
		defer live.Close()
		_, err = listenUnixT(t, path)
		require.ErrorContains(t, err, "another process is serving")
	})
	t.Run("any other file is not replaced", func(t *testing.T) {
		path := filepath.Join(shortTempDir(t), "s.sock")
		require.NoError(t, os.WriteFile(path, []byte("keep me"), 0o600))
		_, err := listenUnixT(t, path)
		require.ErrorContains(t, err, "not a socket")
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, "keep me", string(b))
	})
	t.Run("close leaves a newer server's socket alone", func(t *testing.T) {
		path := filepath.Join(shortTempDir(t), "s.sock")
		ln, err := listenUnixT(t, path)
		require.NoError(t, err)
		require.NoError(t, os.Remove(path))
		newer, err := net.Listen("unix", path)
		require.NoError(t, err)
		defer newer.Close()
		require.NoError(t, ln.Close())
		_, err = os.Lstat(path)
		assert.NoError(t, err)
	})
}

func TestListenConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		sc    sidecarconfig.ServerConfig
		field string
	}{
		{"unknown scheme", sidecarconfig.ServerConfig{Listen: "http://127.0.0.1:8443"}, "server.listen"},
		{"bare path", sidecarconfig.ServerConfig{Listen: "/run/x.sock"}, "server.listen"},
		{"empty unix path", sidecarconfig.ServerConfig{Listen: "unix://"}, "server.listen"},
		{"tcp without a port", sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1"}, "server.listen"},
		{"tcp without TLS", sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0"}, "server.tls.cert"},
		{"tcp without a client CA", sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", TLS: sidecarconfig.TLSConfig{Cert: "c", Key: "k"}}, "server.tls.client_ca"},
		{"tcp with missing files", sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", TLS: sidecarconfig.TLSConfig{Cert: "/nonexistent/c", Key: "/nonexistent/k", ClientCA: "/nonexistent/ca"}}, "server.tls.cert"},
		{"TLS on a unix socket", sidecarconfig.ServerConfig{Listen: "unix:///tmp/x.sock", TLS: sidecarconfig.TLSConfig{Cert: "c"}}, "server.tls"},
		{"a socket group on tcp", sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", ListenGroup: "4242"}, "server.listen_group"},
		{"an unknown socket group", sidecarconfig.ServerConfig{Listen: "unix:///nonexistent/x.sock", ListenGroup: "no-such-group-7f3a"}, "server.listen_group"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := Listen(tt.sc)
			if ln != nil {
				ln.Close()
			}
			var ce *pkcs11ha.ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.field, ce.Field)
		})
	}
	t.Run("a client CA file without certificates", func(t *testing.T) {
		dir := t.TempDir()
		ca := newCA(t, dir, "ca")
		cert, key := ca.ServerCert(t)
		empty := filepath.Join(dir, "empty.pem")
		require.NoError(t, os.WriteFile(empty, []byte("nothing\n"), 0o600))
		_, err := Listen(sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", TLS: sidecarconfig.TLSConfig{Cert: cert, Key: key, ClientCA: empty}})
		var ce *pkcs11ha.ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, "server.tls.client_ca", ce.Field)
	})
	assert.Equal(t, "/run/hsm-ha-proxy.sock", SocketPath(""))
	assert.Equal(t, "/x/y.sock", SocketPath("unix:///x/y.sock"))
	assert.Equal(t, "", SocketPath("tcp://127.0.0.1:1"))
}

func TestAuthTable(t *testing.T) {
	uid, gid := 1000, 100
	tbl, err := newAuthTable([]sidecarconfig.ClientConfig{
		{Name: "by-uid", UnixUID: &uid, Partitions: []string{"payments"}},
		{Name: "by-gid", UnixGID: &gid, Partitions: []string{"ledger"}},
		{Name: "both", UnixUID: intp(2000), UnixGID: intp(200), Partitions: []string{"payments"}},
		{Name: "cert", CertName: "spiffe://x/app", Partitions: []string{"ledger"}},
		{UnixUID: intp(3000)}, // unnamed, nothing granted
	}, []string{"payments", "ledger"})
	require.NoError(t, err)
	tests := []struct {
		name  string
		id    identity
		want  string // principal name; "" for none
		parts []string
	}{
		{"uid", identity{unix: true, uid: 1000, gid: 5}, "by-uid", []string{"payments"}},
		{"gid", identity{unix: true, uid: 7, gid: 100}, "by-gid", []string{"ledger"}},
		{"uid and gid entries add up", identity{unix: true, uid: 1000, gid: 100}, "by-uid", []string{"payments", "ledger"}},
		{"both must match", identity{unix: true, uid: 2000, gid: 1}, "", nil},
		{"both match", identity{unix: true, uid: 2000, gid: 200}, "both", []string{"payments"}},
		{"unnamed entry", identity{unix: true, uid: 3000, gid: 1}, "clients[4]", nil},
		{"unknown uid", identity{unix: true, uid: 1, gid: 1}, "", nil},
		{"cert", identity{certNames: []string{"a.example", "spiffe://x/app"}}, "cert", []string{"ledger"}},
		{"unix entries never match a certificate", identity{certNames: []string{"1000"}}, "", nil},
		{"no name", identity{}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tbl.lookup(tt.id)
			if tt.want == "" {
				assert.Nil(t, p)
				return
			}
			require.NotNil(t, p)
			assert.Equal(t, tt.want, p.name)
			var got []string
			for part := range p.parts {
				got = append(got, part)
			}
			assert.ElementsMatch(t, tt.parts, got)
		})
	}
}

// TestReloadTLS: certificates rotated on disk are picked up by ReloadTLS for new connections (server
// certificate and client CA both); a reload that fails keeps the current configuration.
func TestReloadTLS(t *testing.T) {
	dir := t.TempDir()
	ca1, ca2 := newCA(t, dir, "ca1"), newCA(t, dir, "ca2")
	srv1, srv1Key := ca1.ServerCert(t)
	app1, app1Key := ca1.Issue(t, "app", nil)
	srv2, srv2Key := ca2.ServerCert(t)
	app2, app2Key := ca2.Issue(t, "app", nil)

	ln, err := Listen(sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0",
		TLS: sidecarconfig.TLSConfig{Cert: srv1, Key: srv1Key, ClientCA: ca1.PEMPath}})
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { // completes each handshake and answers one byte
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

	// call connects as a client presenting (cert, key) and trusting roots; it returns the server's leaf.
	call := func(roots *testCA, cert, key string) (*x509.Certificate, error) {
		tc := clientTLS(t, roots, cert, key)
		tc.ServerName = "localhost"
		c, err := tls.Dial("tcp", ln.Addr().String(), tc)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		// With TLS 1.3 a rejected client certificate shows on the first read, not in the handshake.
		if _, err := c.Read(make([]byte, 1)); err != nil {
			return nil, err
		}
		return c.ConnectionState().PeerCertificates[0], nil
	}
	serialOf := func(path string) string { return testcerts.SerialOf(t, path).String() }

	leaf, err := call(ca1, app1, app1Key)
	require.NoError(t, err)
	assert.Equal(t, serialOf(srv1), leaf.SerialNumber.String())

	require.NoError(t, ReloadTLS(ln, sidecarconfig.TLSConfig{Cert: srv2, Key: srv2Key, ClientCA: ca2.PEMPath}))
	leaf, err = call(ca2, app2, app2Key)
	require.NoError(t, err, "a client of the new CA is accepted")
	assert.Equal(t, serialOf(srv2), leaf.SerialNumber.String(), "new connections get the new server certificate")
	_, err = call(ca2, app1, app1Key)
	require.Error(t, err, "a client certificate from the old CA is refused after the reload")

	err = ReloadTLS(ln, sidecarconfig.TLSConfig{Cert: filepath.Join(dir, "missing.pem"), Key: srv2Key, ClientCA: ca2.PEMPath})
	var ce *pkcs11ha.ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "server.tls.cert", ce.Field)
	_, err = call(ca2, app2, app2Key)
	require.NoError(t, err, "a failed reload keeps the current configuration")

	unix, err := listenUnixT(t, filepath.Join(shortTempDir(t), "s.sock"))
	require.NoError(t, err)
	require.Error(t, ReloadTLS(unix, sidecarconfig.TLSConfig{Cert: srv2, Key: srv2Key, ClientCA: ca2.PEMPath}))
}
