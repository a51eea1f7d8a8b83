package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// DefaultListen is where the sidecar listens when server.listen is empty.
const DefaultListen = sidecarconfig.DefaultListen

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
//   - unix://PATH (the default, DefaultListen): a unix socket with mode 0600, or 0660 owned by
//     server.listen_group when that is set (applications running as other users). An existing socket file is
//     replaced only when nothing answers on it; any other file at PATH is an error. The socket is removed
//     when the listener is closed (unless another server has replaced it meanwhile).
//   - tcp://HOST:PORT: TLS with server.tls (cert, key and client_ca are all required), requiring and
//     verifying a client certificate signed by client_ca.
func Listen(sc sidecarconfig.ServerConfig) (net.Listener, error) {
	return ListenInherited(sc, nil)
}

// ListenAddr is the network and address of server.listen's socket ("unix", PATH or "tcp", HOST:PORT): the
// name under which a hot upgrade passes the listener to the new process.
func ListenAddr(sc sidecarconfig.ServerConfig) (network, addr string) {
	if p := SocketPath(sc.Listen); p != "" {
		return "unix", p
	}
	return "tcp", strings.TrimPrefix(sc.Listen, "tcp://")
}

// ListenInherited is Listen on a socket that a previous process of a hot upgrade was serving on (a
// *net.UnixListener or *net.TCPListener for ListenAddr's name): it is adopted instead of bound anew. A nil
// inherited is Listen. The returned listener's SyscallConn reaches the bound socket, to pass it on again.
func ListenInherited(sc sidecarconfig.ServerConfig, inherited net.Listener) (net.Listener, error) {
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
		if sc.TLS != (sidecarconfig.TLSConfig{}) {
			return nil, &pkcs11ha.ConfigError{Field: "server.tls", Msg: "TLS is only used with a tcp:// listener; a unix socket is protected by its mode (0600) and peer credentials"}
		}
		return listenUnix(path, sc.ListenGroup, inherited)
	case strings.HasPrefix(addr, "tcp://"):
		if sc.ListenGroup != "" {
			return nil, &pkcs11ha.ConfigError{Field: "server.listen_group", Msg: "only used with a unix:// listener"}
		}
		hostport := strings.TrimPrefix(addr, "tcp://")
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return nil, &pkcs11ha.ConfigError{Field: "server.listen", Msg: fmt.Sprintf("%q: want tcp://HOST:PORT: %v", addr, err)}
		}
		tc, err := serverTLS(sc.TLS)
		if err != nil {
			return nil, err
		}
		ln := inherited
		if ln == nil {
			if ln, err = net.Listen("tcp", hostport); err != nil {
				return nil, fmt.Errorf("proxy: listen %s: %w", addr, err)
			}
		}
		raw, ok := ln.(syscall.Conn)
		if !ok {
			return nil, fmt.Errorf("proxy: listen %s: inherited %T is not a socket", addr, ln)
		}
		tl := &tlsListener{raw: raw}
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
	raw syscall.Conn // the TCP socket under TLS
	cur atomic.Pointer[tls.Config]
}

// SyscallConn reaches the TCP socket, so that a hot upgrade can pass it on.
func (l *tlsListener) SyscallConn() (syscall.RawConn, error) { return l.raw.SyscallConn() }

// ReloadTLS loads server.tls again (certificate, key, client CA) for the listener Listen returned, so that
// certificates can be rotated without a restart: new connections use the new files, established ones
// keep theirs. On any error the current configuration stays. A unix listener has nothing to reload.
func ReloadTLS(ln net.Listener, c sidecarconfig.TLSConfig) error {
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
func serverTLS(c sidecarconfig.TLSConfig) (*tls.Config, error) {
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

// listenUnix creates the socket with its final mode from the first moment (see unixsock.Listen): 0600, or
// 0660 owned by group (server.listen_group).
func listenUnix(path, group string, inherited net.Listener) (net.Listener, error) {
	opts, err := unixsock.ForGroup(group)
	if err != nil {
		return nil, &pkcs11ha.ConfigError{Field: "server.listen_group", Msg: err.Error()}
	}
	var ln net.Listener
	if ul, ok := inherited.(*net.UnixListener); ok {
		ln, err = unixsock.Inherit(path, ul, opts)
	} else {
		ln, err = unixsock.Listen(path, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return ln, nil
}
