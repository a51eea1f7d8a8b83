package p11front

import (
	"fmt"
	"net"
	"os/user"
	"strconv"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
)

// Listen opens the front end's socket, addr = server.pkcs11 (unix:///PATH): mode 0600, or 0660 owned by
// group (server.pkcs11_group, a name or a numeric gid) when group is set. A stale socket is replaced only
// when nothing answers on it; the socket is removed when the listener is closed.
func Listen(addr, group string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || path == "" {
		return nil, fmt.Errorf("p11front: server.pkcs11 %q: want unix:///PATH", addr)
	}
	opts := unixsock.Options{Mode: 0o600, GID: unixsock.NoGroup}
	if group != "" {
		gid, err := lookupGroup(group)
		if err != nil {
			return nil, err
		}
		opts = unixsock.Options{Mode: 0o660, GID: gid}
	}
	ln, err := unixsock.Listen(path, opts)
	if err != nil {
		return nil, fmt.Errorf("p11front: %w", err)
	}
	return ln, nil
}

// lookupGroup resolves server.pkcs11_group: a numeric gid as it is, else a group name.
func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("p11front: server.pkcs11_group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("p11front: server.pkcs11_group %q: gid %q: %w", group, g.Gid, err)
	}
	return gid, nil
}
