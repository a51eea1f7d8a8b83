package softhsmtest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoServer echoes every connection until the connection or the listener is closed.
func echoServer(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln
}

func roundTrip(t *testing.T, c net.Conn, msg string) time.Duration {
	t.Helper()
	t0 := time.Now()
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
	buf := make([]byte, len(msg))
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, msg, string(buf))
	return time.Since(t0)
}

// requireClosed checks that the peer closed c (EOF or, on TCP after a reset, an error) within 5 s.
func requireClosed(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err := c.Read(make([]byte, 1))
	require.Error(t, err)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "connection still open: %v", err)
}

func TestRelayModes(t *testing.T) {
	dir := t.TempDir()
	echo := echoServer(t, "unix", filepath.Join(dir, "echo.sock"))
	r, err := newRelay("unix", filepath.Join(dir, "relay.sock"), "unix", echo.Addr().String(), 0)
	require.NoError(t, err)
	defer r.close()
	dial := func() net.Conn {
		c, err := net.Dial("unix", r.addr())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}

	c := dial()
	roundTrip(t, c, "hello")
	assert.Equal(t, 1, r.connections())

	// delay per direction, and order kept
	r.setDelay(0, 30*time.Millisecond)
	assert.GreaterOrEqual(t, roundTrip(t, c, "slow"), 30*time.Millisecond)
	r.setDelay(5*time.Millisecond, 5*time.Millisecond)
	var want bytes.Buffer
	go func() {
		for i := range 200 {
			_, _ = c.Write([]byte{byte(i), byte(i >> 8), 'x'})
		}
	}()
	for i := range 200 {
		want.Write([]byte{byte(i), byte(i >> 8), 'x'})
	}
	got := make([]byte, want.Len())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	assert.Equal(t, want.Bytes(), got, "chunks delivered in order")
	r.setDelay(0, 0)

	// hang holds bytes until pass
	r.setMode(modeHang)
	_, err = c.Write([]byte("held"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = c.Read(make([]byte, 4))
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "read during hang: %v", err)
	c2 := dial() // new connections are accepted and held too
	r.setMode(modePass)
	buf := make([]byte, 4)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "held", string(buf))
	roundTrip(t, c2, "new")

	// down closes existing connections and every new one
	r.setMode(modeDown)
	requireClosed(t, c)
	requireClosed(t, c2)
	requireClosed(t, dial())
	r.setMode(modePass)
	c = dial()
	roundTrip(t, c, "back")

	// reset closes existing connections once
	r.reset()
	requireClosed(t, c)
	roundTrip(t, dial(), "after reset")

	// close removes the socket and refuses connections
	c = dial()
	roundTrip(t, c, "x")
	r.close()
	requireClosed(t, c)
	_, err = os.Stat(r.addr())
	assert.True(t, errors.Is(err, os.ErrNotExist))
	_, err = net.Dial("unix", r.addr())
	assert.Error(t, err)
	r.close() // idempotent
}

func TestRelayTargetDown(t *testing.T) {
	dir := t.TempDir()
	r, err := newRelay("unix", filepath.Join(dir, "relay.sock"), "unix", filepath.Join(dir, "nobody.sock"), 0)
	require.NoError(t, err)
	defer r.close()
	c, err := net.Dial("unix", r.addr())
	require.NoError(t, err)
	defer c.Close()
	requireClosed(t, c)
}

func TestRelayTCP(t *testing.T) {
	echo := echoServer(t, "tcp", "127.0.0.1:0")
	r, err := newRelay("tcp", "127.0.0.1:0", "tcp", echo.Addr().String(), 0)
	require.NoError(t, err)
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	require.NoError(t, err)
	defer c.Close()
	for range 20 {
		roundTrip(t, c, "small message") // TCP_NODELAY: no 40 ms Nagle/delayed-ACK stalls
	}
	r.reset()
	requireClosed(t, c)

	// unlisten refuses new connections and keeps existing ones; listen takes the same address again
	addr := r.addr()
	c, err = net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	r.unlisten()
	_, err = net.Dial("tcp", addr)
	require.Error(t, err)
	roundTrip(t, c, "still there")
	require.NoError(t, r.listen())
	require.Equal(t, addr, r.addr())
	c2, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c2.Close()
	roundTrip(t, c2, "listening again")
}

func TestRelayHoldsEOFWhileHanging(t *testing.T) {
	dir := t.TempDir()
	target, err := net.Listen("unix", filepath.Join(dir, "target.sock"))
	require.NoError(t, err)
	defer target.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := target.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	r, err := newRelay("unix", filepath.Join(dir, "relay.sock"), "unix", target.Addr().String(), 0)
	require.NoError(t, err)
	defer r.close()
	c, err := net.Dial("unix", r.addr())
	require.NoError(t, err)
	defer c.Close()
	srv := <-accepted

	r.setMode(modeHang)
	require.NoError(t, srv.Close()) // the device dies behind a hanging network
	require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "the close must be held: %v", err)
	r.setMode(modePass)
	requireClosed(t, c)
}

func TestRelayHoldCurrent(t *testing.T) {
	dir := t.TempDir()
	echo := echoServer(t, "unix", filepath.Join(dir, "echo.sock"))
	r, err := newRelay("unix", filepath.Join(dir, "relay.sock"), "unix", echo.Addr().String(), 0)
	require.NoError(t, err)
	defer r.close()
	c, err := net.Dial("unix", r.addr())
	require.NoError(t, err)
	defer c.Close()
	roundTrip(t, c, "before")

	r.holdCurrent()
	_, err = c.Write([]byte("held"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = c.Read(make([]byte, 4))
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "a current connection is held: %v", err)
	c2, err := net.Dial("unix", r.addr())
	require.NoError(t, err)
	defer c2.Close()
	roundTrip(t, c2, "a new connection passes")

	r.setMode(modePass)
	buf := make([]byte, 4)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "held", string(buf), "released by the next mode change")
}
