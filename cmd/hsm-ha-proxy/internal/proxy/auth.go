package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// identity is who is calling: a unix peer (SO_PEERCRED) or the holder of a verified client certificate.
type identity struct {
	unix      bool
	uid, gid  int
	pid       int
	certNames []string // URI and DNS SANs, else the CN
}

// String describes the identity for logs and 401 messages (never a secret).
func (id identity) String() string {
	if id.unix {
		return fmt.Sprintf("uid=%d gid=%d pid=%d", id.uid, id.gid, id.pid)
	}
	if len(id.certNames) == 0 {
		return "certificate without a name"
	}
	return "cert=" + strings.Join(id.certNames, ",")
}

// certNames returns the names a client certificate is known by: its URI SANs and DNS SANs, or its CN
// when it has neither.
func certNames(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	out = append(out, c.DNSNames...)
	if len(out) == 0 && c.Subject.CommonName != "" {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

// peerKey is the context key of the unix peer credentials stashed by connContext.
type peerKey struct{}

// peerCreds is what SO_PEERCRED said about a unix connection (or why it could not).
type peerCreds struct {
	uid, gid, pid int
	err           error
}

// connContext stashes the peer credentials of a unix connection in its context: they are read once per
// connection, when it is accepted.
func connContext(ctx context.Context, c net.Conn) context.Context {
	var uc *net.UnixConn
	switch c := c.(type) {
	case *net.UnixConn:
		uc = c
	case *hconn:
		uc = c.UnixConn
	default:
		return ctx
	}
	cr, err := unixsock.PeerCred(uc)
	return context.WithValue(ctx, peerKey{}, &peerCreds{uid: cr.UID, gid: cr.GID, pid: cr.PID, err: err})
}

// identityOf extracts the caller's identity from the connection context (unix) or the verified TLS
// state. ok is false when there is none.
func identityOf(ctx context.Context, cs *tls.ConnectionState) (identity, error) {
	if pc, ok := ctx.Value(peerKey{}).(*peerCreds); ok {
		if pc.err != nil {
			return identity{}, fmt.Errorf("reading the peer credentials: %w", pc.err)
		}
		return identity{unix: true, uid: pc.uid, gid: pc.gid, pid: pc.pid}, nil
	}
	if cs != nil && len(cs.VerifiedChains) > 0 && len(cs.PeerCertificates) > 0 {
		return identity{certNames: certNames(cs.PeerCertificates[0])}, nil
	}
	return identity{}, fmt.Errorf("no peer credentials and no verified client certificate")
}

// authTable is an immutable snapshot of the clients: section.
type authTable struct {
	clients []authClient
}

type authClient struct {
	name     string
	uid, gid *int
	certName string
	parts    map[string]bool
}

// newAuthTable builds the table, checking every entry against the configured partitions
// (sidecarconfig.CheckClients).
func newAuthTable(clients []sidecarconfig.ClientConfig, partitions []string) (*authTable, error) {
	if err := sidecarconfig.CheckClients(clients, partitions); err != nil {
		return nil, err
	}
	t := &authTable{}
	for i, c := range clients {
		ac := authClient{name: c.Name, certName: c.CertName, parts: map[string]bool{}}
		if ac.name == "" {
			ac.name = c.Field(i)
		}
		if c.UnixUID != nil {
			v := *c.UnixUID
			ac.uid = &v
		}
		if c.UnixGID != nil {
			v := *c.UnixGID
			ac.gid = &v
		}
		for _, p := range c.Partitions {
			ac.parts[p] = true
		}
		t.clients = append(t.clients, ac)
	}
	return t, nil
}

// matches tells whether entry c describes identity id. A unix peer matches an entry with unix_uid and/or
// unix_gid when every one that is set equals the peer's (primary) uid/gid; a certificate matches an entry
// whose cert_name is one of its names.
func (c *authClient) matches(id identity) bool {
	if id.unix {
		if c.uid == nil && c.gid == nil {
			return false
		}
		return (c.uid == nil || *c.uid == id.uid) && (c.gid == nil || *c.gid == id.gid)
	}
	if c.certName == "" {
		return false
	}
	for _, n := range id.certNames {
		if n == c.certName {
			return true
		}
	}
	return false
}

// principal is a known client: its name (the first matching entry's) and the partitions granted by every
// matching entry.
type principal struct {
	name  string
	parts map[string]bool
}

// lookup returns the principal for id, or nil when no entry matches.
func (t *authTable) lookup(id identity) *principal {
	var p *principal
	for i := range t.clients {
		c := &t.clients[i]
		if !c.matches(id) {
			continue
		}
		if p == nil {
			p = &principal{name: c.name, parts: map[string]bool{}}
		}
		for part := range c.parts {
			p.parts[part] = true
		}
	}
	return p
}

// UnixClient looks a unix peer (SO_PEERCRED uid and gid) up in the current client table — the one
// ReloadClients replaces on SIGHUP — exactly as the HTTP API does: the client's name and the partitions
// it is granted (do not modify the map), or ok false for an unknown peer. The PKCS#11 front end
// (package p11front) asks it, so one clients: section governs both doors.
func (s *Server) UnixClient(uid, gid int) (name string, partitions map[string]bool, ok bool) {
	p := s.auth.Load().lookup(identity{unix: true, uid: uid, gid: gid})
	if p == nil {
		return "", nil, false
	}
	return p.name, p.parts, true
}
