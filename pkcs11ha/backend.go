package pkcs11ha

import (
	"log/slog"
	"sync/atomic"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// clusterDevice is the cluster's handle on one configured device.
type clusterDevice struct {
	idx  int
	name string
	cfg  DeviceConfig
	be   devicebackend.Backend
}

// hooks is a backend's callbacks, set once before it opens (worker.go reads them from its reader).
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

// newBackend makes the backend of device i of settings s (nothing is loaded yet).
func newBackend(s *settings, i int, log *slog.Logger, m *metrics) (devicebackend.Backend, error) {
	if s.own.Isolation == IsolationProcess {
		return newWorkerDevice(s, i, log, m), nil
	}
	return devicebackend.NewDevice(s.backend(), i, log)
}
