package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shortDir is a temporary directory with a path short enough for a unix socket (sun_path is 108 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "us")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestListenModeAndGroup(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		mode os.FileMode
		gid  int
	}{
		{"default 0600", Options{GID: NoGroup}, 0o600, os.Getgid()},
		{"0660 with the process's group", Options{Mode: 0o660, GID: os.Getgid()}, 0o660, os.Getgid()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(shortDir(t), "s.sock")
			ln, err := Listen(path, tt.opts)
			require.NoError(t, err)
			fi, err := os.Lstat(path)
			require.NoError(t, err)
			assert.Equal(t, tt.mode, fi.Mode().Perm())
			assert.Equal(t, uint32(tt.gid), fi.Sys().(*syscall.Stat_t).Gid)
			require.NoError(t, ln.Close())
			_, err = os.Lstat(path)
			assert.True(t, os.IsNotExist(err), "removed on close")
		})
	}
	if os.Geteuid() == 0 {
		t.Run("0660 with another group (root)", func(t *testing.T) {
			path := filepath.Join(shortDir(t), "s.sock")
			ln, err := Listen(path, Options{Mode: 0o660, GID: 4242})
			require.NoError(t, err)
			defer ln.Close()
			fi, err := os.Lstat(path)
			require.NoError(t, err)
			assert.Equal(t, uint32(4242), fi.Sys().(*syscall.Stat_t).Gid)
		})
	}
}

func TestPeerCred(t *testing.T) {
	path := filepath.Join(shortDir(t), "s.sock")
	ln, err := Listen(path, Options{GID: NoGroup})
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := net.Dial("unix", path)
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := ln.Accept()
	require.NoError(t, err)
	cr, err := PeerCred(c.(*net.UnixConn))
	c.Close()
	<-done
	require.NoError(t, err)
	assert.Equal(t, Cred{UID: os.Getuid(), GID: os.Getgid(), PID: os.Getpid()}, cr)
}
