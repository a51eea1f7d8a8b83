//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// peerCred is only implemented on Linux (SO_PEERCRED); elsewhere unix clients cannot be identified.
func peerCred(*net.UnixConn) (uid, gid, pid int, err error) {
	return 0, 0, 0, errors.New("peer credentials (SO_PEERCRED) are only supported on Linux")
}
