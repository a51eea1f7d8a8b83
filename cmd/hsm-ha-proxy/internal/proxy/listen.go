package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// DefaultListen is where the sidecar listens when server.listen is empty.
const DefaultListen = "unix:///run/hsm-ha-proxy.sock"

// SocketPath returns the unix socket path of a server.listen value ("" means DefaultListen), or "" when
// it is not a unix address.
func SocketPath(listen string) string {
	if listen == "" {
		listen = DefaultListen
	}
	if p, ok := strings.CutPrefix(listen, "unix://"); ok {
		return p
	}
	return ""
}

// Listen opens the listener server.listen names:
//
//   - unix://PATH (the default, DefaultListen): a unix socket with mode 0600. An existing socket file is
//     replaced only when nothing answers on it; any other file at PATH is an error. The socket is removed
//     when the listener is closed (unless another server has replaced it meanwhile).
//   - tcp://HOST:PORT: TLS with server.tls (cert, key and client_ca are all required), requiring and
//     verifying a client certificate signed by client_ca.
func Listen(sc ServerConfig) (net.Listener, error) {
	addr := sc.Listen
	if addr == "" {
		addr = DefaultListen
	}
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if path == "" {
			return nil, &pkcs11ha.ConfigError{Field: "server.listen", Msg: "unix:// needs a socket path"}
		}
		if sc.TLS != (TLSConfig{}) {
			return nil, &pkcs11ha.ConfigError{Field: "server.tls", Msg: "TLS is only used with a tcp:// listener; a unix socket is protected by its mode (0600) and peer credentials"}
		}
		return listenUnix(path)
	case strings.HasPrefix(addr, "tcp://"):
		hostport := strings.TrimPrefix(addr, "tcp://")
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return nil, &pkcs11ha.ConfigError{Field: "server.listen", Msg: fmt.Sprintf("%q: want tcp://HOST:PORT: %v", addr, err)}
		}
		tc, err := serverTLS(sc.TLS)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", hostport)
		if err != nil {
			return nil, fmt.Errorf("proxy: listen %s: %w", addr, err)
		}
		tl := &tlsListener{}
		tl.cur.Store(tc)
		// Every handshake takes the current configuration, so ReloadTLS affects new connections only.
		tl.Listener = tls.NewListener(ln, &tls.Config{
			MinVersion:         tls.VersionTLS12,
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return tl.cur.Load(), nil },
		})
		return tl, nil
	}
	return nil, &pkcs11ha.ConfigError{Field: "server.listen", Msg: fmt.Sprintf("%q: want unix://PATH or tcp://HOST:PORT", addr)}
}

// tlsListener is the tcp:// listener: TLS with a configuration that ReloadTLS can replace.
type tlsListener struct {
	net.Listener
	cur atomic.Pointer[tls.Config]
}

// ReloadTLS loads server.tls again (certificate, key, client CA) for the listener Listen returned, so that
// certificates can be rotated without a restart: new connections use the new files, established ones
// keep theirs. On any error the current configuration stays. A unix listener has nothing to reload.
func ReloadTLS(ln net.Listener, c TLSConfig) error {
	tl, ok := ln.(*tlsListener)
	if !ok {
		return errors.New("proxy: not a tcp:// listener; nothing to reload")
	}
	tc, err := serverTLS(c)
	if err != nil {
		return err
	}
	tl.cur.Store(tc)
	return nil
}

// serverTLS loads the sidecar's certificate and the CA its clients' certificates must chain to.
func serverTLS(c TLSConfig) (*tls.Config, error) {
	for _, f := range []struct{ name, v string }{{"cert", c.Cert}, {"key", c.Key}, {"client_ca", c.ClientCA}} {
		if f.v == "" {
			return nil, &pkcs11ha.ConfigError{Field: "server.tls." + f.name, Msg: "required with a tcp:// listener (clients must present certificates)"}
		}
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, &pkcs11ha.ConfigError{Field: "server.tls.cert", Msg: fmt.Sprintf("loading %s and %s: %v", c.Cert, c.Key, err)}
	}
	pem, err := os.ReadFile(c.ClientCA)
	if err != nil {
		return nil, &pkcs11ha.ConfigError{Field: "server.tls.client_ca", Msg: err.Error()}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, &pkcs11ha.ConfigError{Field: "server.tls.client_ca", Msg: fmt.Sprintf("%s holds no PEM certificate", c.ClientCA)}
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"http/1.1"},
	}, nil
}

// listenUnix creates the socket with mode 0600 from the first moment: it is bound inside a fresh private
// directory (mode 0700) next to path, chmodded, then renamed onto path — which also replaces a stale
// socket atomically.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("proxy: %s exists and is not a socket; not replacing it", path)
		}
		if err := checkStale(path); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".hp")
	if err != nil {
		return nil, fmt.Errorf("proxy: creating the socket: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("proxy: listen unix %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("proxy: chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("proxy: placing the socket at %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return &unixListener{UnixListener: ln, path: path, fi: fi}, nil
}

// checkStale returns nil when nothing answers on the socket at path (connection refused), and an error
// when something does or when it cannot tell.
func checkStale(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("proxy: another process is serving on %s", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return fmt.Errorf("proxy: %s exists and cannot be probed (%w); not replacing it", path, err)
}

// unixListener removes its socket file on Close, if the file is still the one it created.
type unixListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

// Addr returns the socket's path (the name it was bound under is a temporary one).
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close stops listening and removes the socket file.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			_ = os.Remove(l.path)
		}
	})
	return err
}
