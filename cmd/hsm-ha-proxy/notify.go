package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

// notifyTimeout bounds a send to systemd's notify socket. The socket is a datagram socket with a short
// queue (net.unix.max_dgram_qlen, 10 by default): when its reader stops reading, a send blocks for as long
// as it does. A sidecar that waited there would stop in the middle of a hot upgrade, after telling the old
// process to hand over and before taking the connections (docs/upgrades.md, "A hang that was found and fixed").
const notifyTimeout = time.Second

// sdNotify sends a state line to systemd (a Type=notify unit; deploy/systemd): READY=1 once serving and,
// after a hot upgrade, MAINPID= of the new process, so that systemd follows it and the old process's exit
// does not stop the service. Without NOTIFY_SOCKET it does nothing. It never waits longer than
// notifyTimeout: a message systemd did not take is an error, the caller's to log.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(notifyTimeout))
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("systemd's notify socket %s did not take the message within %v: %w", addr, notifyTimeout, err)
	}
	return nil
}
