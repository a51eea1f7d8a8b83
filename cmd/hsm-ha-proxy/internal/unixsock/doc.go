// Package unixsock is the unix-socket plumbing the sidecar's two doors share (the HTTP API of package proxy
// and the PKCS#11 front end of package p11front): a listener whose socket has its final mode and group
// from the first moment, replaces a stale socket only when nothing answers on it and removes its socket on
// Close; and the peer credentials (SO_PEERCRED) that identify a client.
package unixsock
