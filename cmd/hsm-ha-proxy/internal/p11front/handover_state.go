package p11front

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
)

// stateVersion is the version of the documents below (docs/ARCHITECTURE.md, "Hot upgrade"); a process
// refuses a document of another version, and the connection is then closed.
const stateVersion = 1

// connState is what a connection is, written by the old process of a hot upgrade and read by the new one
// together with the connection's socket.
type connState struct {
	Version int       `json:"version"`
	Peer    peerState `json:"peer"`
	// Protocol is the negotiated p11-kit RPC version; -1 when the handshake has not happened yet.
	Protocol    int            `json:"protocol"`
	Initialized bool           `json:"initialized"`
	Pending     []byte         `json:"pending,omitempty"` // input read but not served, served first by the new process
	NextSession uint64         `json:"next_session"`
	LoggedIn    []uint64       `json:"logged_in,omitempty"` // slots
	Sessions    []sessionState `json:"sessions,omitempty"`
}

// peerState is who connected (SO_PEERCRED): the new process reads it again from the socket and refuses a
// connection whose uid differs.
type peerState struct {
	UID int `json:"uid"`
	GID int `json:"gid"`
	PID int `json:"pid"`
}

// sessionState is one session: its handle (the application's), its slot, and its search and active
// operations, which are plain data already (opState: mechanisms with their parameters, key handles, the
// input so far or the running hash's state, an output kept for a retry).
type sessionState struct {
	Handle    uint64  `json:"handle"`
	Slot      uint64  `json:"slot"`
	Partition string  `json:"partition"`
	RW        bool    `json:"rw"`
	Ops       opState `json:"ops"`
}

// objectsState is the front end's object handles: (partition, label, class) -> handle, and the next
// handle to give.
type objectsState struct {
	Version int           `json:"version"`
	Next    uint64        `json:"next"`
	Objects []objectState `json:"objects"`
}

type objectState struct {
	Handle    uint64 `json:"handle"`
	Partition string `json:"partition"`
	Label     string `json:"label"`
	Class     uint64 `json:"class"`
}

// export writes the connection's state once its reader has stopped at a frame boundary and its calls in
// flight are answered: what br holds (and what an earlier process's input still holds) goes along.
func (c *conn) export(br *bufio.Reader) {
	buffered, _ := br.Peek(br.Buffered())
	st := &connState{Version: stateVersion, Peer: peerState{UID: c.cred.UID, GID: c.cred.GID, PID: c.cred.PID},
		Protocol: -1, Initialized: c.initialized.Load(), Pending: bytes.Clone(buffered)}
	if c.pending != nil {
		rest, _ := io.ReadAll(c.pending)
		st.Pending = append(st.Pending, rest...)
	}
	if c.shook {
		st.Protocol = int(c.version)
	}
	c.sess.export(st)
	c.exported = st
}

// export adds the sessions and the login state to st.
func (t *sessionTable) export(st *connState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st.NextSession = t.next
	for slot, in := range t.loggedIn {
		if in {
			st.LoggedIn = append(st.LoggedIn, slot)
		}
	}
	slices.Sort(st.LoggedIn)
	for _, s := range t.open {
		s.mu.Lock()
		st.Sessions = append(st.Sessions, sessionState{Handle: s.handle, Slot: s.slot, Partition: s.partition, RW: s.rw,
			Ops: s.ops})
		s.mu.Unlock()
	}
	slices.SortFunc(st.Sessions, func(a, b sessionState) int { return cmp.Compare(a.Handle, b.Handle) })
}

// restore makes the connection what st says (a connection being adopted, not yet served).
func (c *conn) restore(st *connState) error {
	if st.Version != stateVersion {
		return fmt.Errorf("p11front: connection state version %d, want %d", st.Version, stateVersion)
	}
	if c.credErr != nil {
		return fmt.Errorf("p11front: reading the adopted connection's peer: %w", c.credErr)
	}
	if st.Peer.UID != c.cred.UID {
		return fmt.Errorf("p11front: adopted connection's peer is uid %d, its state says %d", c.cred.UID, st.Peer.UID)
	}
	if st.Protocol >= 0 {
		c.shook, c.version = true, byte(st.Protocol)
	}
	c.initialized.Store(st.Initialized)
	if len(st.Pending) > 0 {
		c.pending = bytes.NewReader(st.Pending)
	}
	t := c.sess
	t.next = max(st.NextSession, 1)
	for _, slot := range st.LoggedIn {
		t.loggedIn[slot] = true
	}
	for _, ss := range st.Sessions {
		// Each call derives what it needs from the operations' plain state (the key object by its handle,
		// the running hash from its state), as it does in the process that began them.
		t.open[ss.Handle] = &session{handle: ss.Handle, slot: ss.Slot, partition: ss.Partition, rw: ss.RW, ops: ss.Ops}
		t.next = max(t.next, ss.Handle+1)
	}
	return nil
}

// export is the registry's handles.
func (r *registry) export() *objectsState {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := &objectsState{Version: stateVersion, Next: r.next}
	for k, h := range r.handles {
		st.Objects = append(st.Objects, objectState{Handle: h, Partition: k.partition, Label: k.label, Class: k.class})
	}
	slices.SortFunc(st.Objects, func(a, b objectState) int { return cmp.Compare(a.Handle, b.Handle) })
	return st
}

// restore takes the old process's handles (before any object of this process is built).
func (r *registry) restore(st *objectsState) error {
	if st.Version != stateVersion {
		return fmt.Errorf("p11front: object handles version %d, want %d", st.Version, stateVersion)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.handles) > 0 {
		return errors.New("p11front: object handles given out already; not taking the old process's")
	}
	for _, o := range st.Objects {
		r.handles[objKey{partition: o.Partition, label: o.Label, class: o.Class}] = o.Handle
		r.next = max(r.next, o.Handle+1)
	}
	r.next = max(r.next, st.Next)
	return nil
}
