package main

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSdNotifyFullSocket: a notify socket nobody reads fills up (its datagram queue is short); sdNotify then
// returns an error instead of waiting for a reader, so a hot upgrade never stops there. This hung the new
// process of the 11th upgrade of the long TestHotUpgrade (the queue holds 10 datagrams by default).
func TestSdNotifyFullSocket(t *testing.T) {
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "notify.sock"), Net: "unixgram"})
	require.NoError(t, err)
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", ln.LocalAddr().String())

	sent := 0
	for ; sent < 100_000; sent++ {
		if err = sdNotify("READY=1"); err != nil {
			break
		}
	}
	require.Error(t, err, "a socket nobody reads is full after some datagrams")
	assert.Contains(t, err.Error(), "did not take the message")
	assert.Positive(t, sent, "the first datagrams were queued")

	// What was queued is intact, and once systemd reads again a message goes through.
	buf := make([]byte, 64)
	n, err := ln.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "READY=1", string(buf[:n]))
	require.NoError(t, sdNotify("MAINPID=1\nREADY=1"))
}

// TestSdNotifyUnset: without NOTIFY_SOCKET (not under systemd) there is nothing to tell.
func TestSdNotifyUnset(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	assert.NoError(t, sdNotify("READY=1"))
}
