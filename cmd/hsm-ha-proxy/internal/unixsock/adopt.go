package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// adoptWait bounds how long Adopt waits for the door to serve (they are called from different goroutines).
const adoptWait = 10 * time.Second

// Adopt takes a connection the old process of a hot upgrade passed (docs/ARCHITECTURE.md, "Hot upgrade"):
// f is its socket (closed here). It returns once started is closed (the door serves), or fails after
// adoptWait, closing the connection.
func Adopt(f *os.File, started <-chan struct{}) (net.Conn, error) {
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("adopting a connection: %w", err)
	}
	select {
	case <-started:
		return nc, nil
	case <-time.After(adoptWait):
		nc.Close()
		return nil, errors.New("Adopt: Serve was not called")
	}
}
