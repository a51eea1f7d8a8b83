package devicebackend

import "sync/atomic"

// hooks is a backend's callbacks (Backend.SetHooks). They are set before the backend opens, but read from
// goroutines the backend starts (a worker's reader, a lane's calls), so they are atomic: a SetHooks after
// Open is safe too.
type hooks struct {
	keysChanged atomic.Pointer[func()]
	down        atomic.Pointer[func(string)]
}

func (h *hooks) set(keysChanged func(), down func(string)) {
	h.keysChanged.Store(&keysChanged)
	h.down.Store(&down)
}

func (h *hooks) onKeys() {
	if f := h.keysChanged.Load(); f != nil && *f != nil {
		(*f)()
	}
}

func (h *hooks) onDown(reason string) {
	if f := h.down.Load(); f != nil && *f != nil {
		(*f)(reason)
	}
}
