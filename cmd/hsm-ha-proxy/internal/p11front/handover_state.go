package p11front

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto"
	"crypto/rsa"
	"encoding"
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

// sessionState is one session: its handle (the application's), its slot and its active operations.
type sessionState struct {
	Handle    uint64     `json:"handle"`
	Slot      uint64     `json:"slot"`
	Partition string     `json:"partition"`
	RW        bool       `json:"rw"`
	Find      *findState `json:"find,omitempty"`
	Sign      *sigState  `json:"sign,omitempty"`
	Verify    *sigState  `json:"verify,omitempty"`
}

// findState is a C_FindObjects cursor.
type findState struct {
	Handles []uint64 `json:"handles"`
	Pos     int      `json:"pos"`
}

// sigState is an active signature or verification (sigPlan): the mechanism, the key object, the PSS
// parameters and the input so far (the running hash's state, or the raw input).
type sigState struct {
	Mechanism uint64 `json:"mechanism"`
	Object    uint64 `json:"object"`
	Hash      uint   `json:"hash,omitempty"` // crypto.Hash of the digest
	PSSSalt   int    `json:"pss_salt,omitempty"`
	HashState []byte `json:"hash_state,omitempty"`
	Buf       []byte `json:"buf,omitempty"`
	Multi     bool   `json:"multi,omitempty"`
	SigLen    int    `json:"sig_len"`
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
	dropped := c.sess.export(st)
	if dropped > 0 {
		// Decrypt, encrypt and digest operations are not carried yet: the application's next call on that
		// session gets CKR_OPERATION_NOT_INITIALIZED.
		c.log.Warn("PKCS#11 connection handed over without some active operations", "operations", dropped)
	}
	c.exported = st
}

// export adds the sessions and the login state to st and returns how many active operations it left out.
func (t *sessionTable) export(st *connState) (dropped int) {
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
		ss := sessionState{Handle: s.handle, Slot: s.slot, Partition: s.partition, RW: s.rw}
		if s.find != nil {
			ss.Find = &findState{Handles: s.find.handles, Pos: s.find.pos}
		}
		var err error
		if s.sign != nil {
			if ss.Sign, err = s.sign.sigPlan.export(); err != nil {
				dropped++
			}
		}
		if s.verify != nil {
			if ss.Verify, err = s.verify.sigPlan.export(); err != nil {
				dropped++
			}
		}
		for _, op := range []bool{s.decrypt != nil, s.encrypt != nil, s.digest != nil} {
			if op {
				dropped++
			}
		}
		s.mu.Unlock()
		st.Sessions = append(st.Sessions, ss)
	}
	slices.SortFunc(st.Sessions, func(a, b sessionState) int { return cmp.Compare(a.Handle, b.Handle) })
	return dropped
}

// export is the plan's state; an error when its running hash cannot be saved (every crypto.Hash of the
// standard library can).
func (p *sigPlan) export() (*sigState, error) {
	st := &sigState{Mechanism: p.mech.typ, Object: p.obj.handle, Hash: uint(p.hash), Buf: bytes.Clone(p.buf), Multi: p.multi,
		SigLen: p.sigLen}
	if p.pss != nil {
		st.PSSSalt = p.pss.SaltLength
	}
	if p.h != nil {
		m, ok := p.h.(encoding.BinaryMarshaler)
		if !ok {
			return nil, errors.New("p11front: the running hash cannot be saved")
		}
		b, err := m.MarshalBinary()
		if err != nil {
			return nil, err
		}
		st.HashState = b
	}
	return st, nil
}

// importPlan rebuilds a plan from its state, with the object of the same handle in this process.
func (c *conn) importPlan(st *sigState) (*sigPlan, error) {
	m := mechByType[st.Mechanism]
	o := c.s.objs.get(st.Object)
	if m == nil || o == nil {
		return nil, fmt.Errorf("p11front: operation on mechanism %#x, object %d: unknown here", st.Mechanism, st.Object)
	}
	p := &sigPlan{mech: m, obj: o, hash: crypto.Hash(st.Hash), buf: st.Buf, multi: st.Multi, sigLen: st.SigLen}
	if st.PSSSalt > 0 {
		p.pss = &rsa.PSSOptions{SaltLength: st.PSSSalt, Hash: p.hash}
	}
	if m.hash != 0 {
		p.h = m.hash.New()
		u, ok := p.h.(encoding.BinaryUnmarshaler)
		if !ok || len(st.HashState) == 0 {
			return nil, errors.New("p11front: no running hash to restore")
		}
		if err := u.UnmarshalBinary(st.HashState); err != nil {
			return nil, fmt.Errorf("p11front: restoring the running hash: %w", err)
		}
	}
	return p, nil
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
		s := &session{handle: ss.Handle, slot: ss.Slot, partition: ss.Partition, rw: ss.RW}
		if ss.Find != nil {
			s.find = &findOp{handles: ss.Find.Handles, pos: ss.Find.Pos}
		}
		if err := c.restoreOps(s, ss); err != nil {
			return err
		}
		t.open[s.handle] = s
		t.next = max(t.next, s.handle+1)
	}
	return nil
}

// restoreOps restores a session's signature and verification, with the cluster's key for a signature.
func (c *conn) restoreOps(s *session, ss sessionState) error {
	if ss.Sign != nil {
		p, err := c.importPlan(ss.Sign)
		if err != nil {
			return err
		}
		key, err := c.s.be.Key(c.s.base, p.obj.partition, p.obj.label)
		if err != nil {
			return fmt.Errorf("p11front: the key of an active signature: %w", err)
		}
		s.sign = &signOp{sigPlan: p, key: key}
	}
	if ss.Verify != nil {
		p, err := c.importPlan(ss.Verify)
		if err != nil {
			return err
		}
		s.verify = &verifyOp{sigPlan: p}
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
