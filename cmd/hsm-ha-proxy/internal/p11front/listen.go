package p11front

import (
	"fmt"
	"net"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
)

// Listen opens the front end's socket, addr = server.pkcs11 (unix:///PATH): mode 0600, or 0660 owned by
// group (server.pkcs11_group, a name or a numeric gid) when group is set. A stale socket is replaced only
// when nothing answers on it; the socket is removed when the listener is closed.
func Listen(addr, group string) (net.Listener, error) {
	return ListenInherited(addr, group, nil)
}

// ListenInherited is Listen on the socket a previous process of a hot upgrade was serving on (inherited,
// a *net.UnixListener): it is adopted, given the mode and group of group, instead of bound anew. A nil
// inherited is Listen.
func ListenInherited(addr, group string, inherited net.Listener) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || path == "" {
		return nil, fmt.Errorf("p11front: server.pkcs11 %q: want unix:///PATH", addr)
	}
	opts, err := unixsock.ForGroup(group)
	if err != nil {
		return nil, fmt.Errorf("p11front: server.pkcs11_group: %w", err)
	}
	var ln net.Listener
	if ul, ok := inherited.(*net.UnixListener); ok {
		ln, err = unixsock.Inherit(path, ul, opts)
	} else {
		ln, err = unixsock.Listen(path, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("p11front: %w", err)
	}
	return ln, nil
}
