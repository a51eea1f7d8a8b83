package pkcs11ha

import (
	"log/slog"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// clusterDevice is the cluster's handle on one configured device.
type clusterDevice struct {
	idx  int
	name string
	cfg  DeviceConfig
	be   devicebackend.Backend
}

// newBackend makes the backend of device i of the cluster's backend settings bs (nothing is loaded yet).
func newBackend(s *settings, bs *devicebackend.Settings, i int, log *slog.Logger, m *metrics) (devicebackend.Backend, error) {
	if s.own.Isolation == IsolationProcess {
		return devicebackend.NewWorkerDevice(bs, i, log, m), nil
	}
	return devicebackend.NewDevice(bs, i, log)
}

// MaybeRunWorker serves as a device worker and exits when this process was started as one by a cluster
// with policy.isolation "process"; otherwise it returns at once. A program that opens clusters with
// process isolation calls it first thing in main (before flags are parsed), because the cluster starts
// its workers by re-executing the program's own binary (or the one given with WithWorkerCommand).
func MaybeRunWorker() { devicebackend.MaybeRunWorker() }
