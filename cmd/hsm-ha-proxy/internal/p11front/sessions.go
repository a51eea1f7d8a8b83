package p11front

import (
	"sync"

	"github.com/miekg/pkcs11"
)

// MaxSessions bounds the sessions one connection (one application's module instance) may have open;
// C_OpenSession answers CKR_SESSION_COUNT beyond it.
const MaxSessions = 256

// session is one PKCS#11 session of a connection. Its handle and state belong to the front end, not to a
// device, so they survive failover and device re-initialisation.
type session struct {
	handle    uint64
	slot      uint64
	partition string
	rw        bool

	mu  sync.Mutex // guards ops (an application may misuse a session from two threads)
	ops opState
}

// sessionTable is a connection's sessions and its login state (per slot, as PKCS#11 has it: logging in on
// one session logs in every session of that token for the application).
type sessionTable struct {
	mu       sync.Mutex
	next     uint64
	open     map[uint64]*session
	loggedIn map[uint64]bool
}

func newSessionTable() *sessionTable {
	return &sessionTable{next: 1, open: map[uint64]*session{}, loggedIn: map[uint64]bool{}}
}

// add opens a session on slot for partition; CKR_SESSION_COUNT past MaxSessions.
func (t *sessionTable) add(slot uint64, partition string, rw bool) (*session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.open) >= MaxSessions {
		return nil, rvErr(pkcs11.CKR_SESSION_COUNT, "too many sessions on this connection")
	}
	s := &session{handle: t.next, slot: slot, partition: partition, rw: rw}
	t.next++
	t.open[s.handle] = s
	return s, nil
}

// get returns the session with handle h, or CKR_SESSION_HANDLE_INVALID.
func (t *sessionTable) get(h uint64) (*session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.open[h]; s != nil {
		return s, nil
	}
	return nil, rvErr(pkcs11.CKR_SESSION_HANDLE_INVALID, "no such session")
}

// remove closes session h; closing the last session of a slot logs the application out of it.
func (t *sessionTable) remove(h uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.open[h]
	if s == nil {
		return rvErr(pkcs11.CKR_SESSION_HANDLE_INVALID, "no such session")
	}
	delete(t.open, h)
	t.logoutIfLastLocked(s.slot)
	return nil
}

// allSlots makes removeSlot close every session (C_Finalize, end of the connection).
const allSlots = ^uint64(0)

// removeSlot closes every session of slot (C_CloseAllSessions) and returns how many it closed.
func (t *sessionTable) removeSlot(slot uint64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for h, s := range t.open {
		if slot == allSlots || s.slot == slot {
			delete(t.open, h)
			n++
		}
	}
	if slot == allSlots {
		clear(t.loggedIn)
	} else {
		delete(t.loggedIn, slot)
	}
	return n
}

func (t *sessionTable) logoutIfLastLocked(slot uint64) {
	for _, s := range t.open {
		if s.slot == slot {
			return
		}
	}
	delete(t.loggedIn, slot)
}

// counts returns the number of sessions, and of read-write sessions, on slot.
func (t *sessionTable) counts(slot uint64) (all, rw uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.open {
		if s.slot == slot {
			all++
			if s.rw {
				rw++
			}
		}
	}
	return all, rw
}

// total is the number of open sessions.
func (t *sessionTable) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}

// login marks slot logged in; CKR_USER_ALREADY_LOGGED_IN when it is.
func (t *sessionTable) login(slot uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.loggedIn[slot] {
		return rvErr(pkcs11.CKR_USER_ALREADY_LOGGED_IN, "already logged in")
	}
	t.loggedIn[slot] = true
	return nil
}

// logout marks slot logged out; CKR_USER_NOT_LOGGED_IN when it was not logged in.
func (t *sessionTable) logout(slot uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loggedIn[slot] {
		return rvErr(pkcs11.CKR_USER_NOT_LOGGED_IN, "not logged in")
	}
	delete(t.loggedIn, slot)
	return nil
}

func (t *sessionTable) isLoggedIn(slot uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loggedIn[slot]
}

// state is the session's CKS_* state.
func (t *sessionTable) state(s *session) uint64 {
	user := t.isLoggedIn(s.slot)
	switch {
	case s.rw && user:
		return pkcs11.CKS_RW_USER_FUNCTIONS
	case s.rw:
		return pkcs11.CKS_RW_PUBLIC_SESSION
	case user:
		return pkcs11.CKS_RO_USER_FUNCTIONS
	}
	return pkcs11.CKS_RO_PUBLIC_SESSION
}
