//go:build !linux

package unixsock

import (
	"errors"
	"net"
)

// PeerCred is only implemented on Linux (SO_PEERCRED); elsewhere unix clients cannot be identified.
func PeerCred(*net.UnixConn) (Cred, error) {
	return Cred{}, errors.New("peer credentials (SO_PEERCRED) are only supported on Linux")
}
