package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Cred is what SO_PEERCRED says about the process at the other end of a unix connection.
type Cred struct {
	UID, GID, PID int
}

// Options are the socket file's permissions.
type Options struct {
	// Mode is the socket's permission bits; 0 means 0600.
	Mode fs.FileMode
	// GID, when >= 0, is the group the socket is given (with a Mode such as 0660). Use NoGroup to keep
	// the process's own.
	GID int
}

// NoGroup leaves the socket's group as created.
const NoGroup = -1

// Listen creates a unix socket at path with the mode (and group) of opts from the first moment: it is
// bound inside a fresh private directory (mode 0700) next to path, given its mode and group, then renamed
// onto path — which also replaces a stale socket atomically. An existing socket file is replaced only
// when nothing answers on it; any other file at path is an error. Close removes the socket file, unless
// another server has replaced it meanwhile.
func Listen(path string, opts Options) (net.Listener, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		if err := checkStale(path); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".hp")
	if err != nil {
		return nil, fmt.Errorf("creating the socket: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen unix %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := place(tmp, path, opts); err != nil {
		ln.Close()
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// place gives the freshly bound socket tmp its mode and group and moves it to path.
func place(tmp, path string, opts Options) error {
	if opts.GID >= 0 {
		if err := os.Lchown(tmp, -1, opts.GID); err != nil {
			return fmt.Errorf("giving the socket group %d: %w", opts.GID, err)
		}
	}
	if err := os.Chmod(tmp, opts.Mode.Perm()); err != nil {
		return fmt.Errorf("chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("placing the socket at %s: %w", path, err)
	}
	return nil
}

// checkStale returns nil when nothing answers on the socket at path (connection refused), and an error
// when something does or when it cannot tell.
func checkStale(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another process is serving on %s", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return fmt.Errorf("%s exists and cannot be probed (%w); not replacing it", path, err)
}

// Inherit adopts a listener a previous process of a hot upgrade was serving on path (docs/ARCHITECTURE.md,
// "Hot upgrade"): the socket file is left where it is and given the mode and group of opts (the new config's),
// and Close removes it as Listen's does.
func Inherit(path string, ln *net.UnixListener, opts Options) (net.Listener, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	ln.SetUnlinkOnClose(false)
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return nil, fmt.Errorf("inherited socket %s: the file there is not a socket", path)
	}
	if opts.GID >= 0 {
		if err := os.Lchown(path, -1, opts.GID); err != nil {
			return nil, fmt.Errorf("giving the socket group %d: %w", opts.GID, err)
		}
	}
	if err := os.Chmod(path, opts.Mode.Perm()); err != nil {
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// KeepSocket makes a listener of Listen or Inherit leave its socket file on Close: the new process of a hot
// upgrade serves on it. Other listeners are left alone.
func KeepSocket(ln net.Listener) {
	if l, ok := ln.(*listener); ok {
		l.keep.Store(true)
	}
}

// listener removes its socket file on Close, if the file is still the one it created (and KeepSocket was
// not called).
type listener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
	keep atomic.Bool
}

// Addr returns the socket's path (the name it was bound under is a temporary one).
func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close stops listening and removes the socket file.
func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if l.keep.Load() {
			return
		}
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			_ = os.Remove(l.path)
		}
	})
	return err
}
