package main

import (
	"net"
	"os"
)

// sdNotify sends a state line to systemd (a Type=notify unit; deploy/systemd): READY=1 once serving and,
// after a hot upgrade, MAINPID= of the new process, so that systemd follows it and the old process's exit
// does not stop the service. Without NOTIFY_SOCKET it does nothing.
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
	_, err = c.Write([]byte(state))
	return err
}
