package pkcs11ha

import (
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// inproc returns device i's in-process backend (policy.isolation "none"), for tests of its internals.
func (cl *Cluster) inproc(i int) *devicebackend.Device {
	return cl.devices[i].be.(*devicebackend.Device)
}

// inprocDevices returns every device's in-process backend.
func (cl *Cluster) inprocDevices() []*devicebackend.Device {
	out := make([]*devicebackend.Device, len(cl.devices))
	for i := range cl.devices {
		out[i] = cl.inproc(i)
	}
	return out
}

// LaneCount reports how many module instances device serves on (1 unless its module gets lanes).
func (cl *Cluster) LaneCount(name string) int {
	for _, cd := range cl.devices {
		if d, ok := cd.be.(*devicebackend.Device); ok && cd.name == name {
			return len(d.LaneList())
		}
	}
	return 0
}

// loginAttempts is partition's C_Login count on device, from Status.
func loginAttempts(cl *Cluster, device, partition string) int64 {
	for _, ds := range cl.Status() {
		for _, p := range ds.Partitions {
			if ds.Name == device && p.Name == partition {
				return p.Logins
			}
		}
	}
	return 0
}
