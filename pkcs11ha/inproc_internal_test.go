package pkcs11ha

// inproc returns device i's in-process backend (policy.isolation "none"), for tests of its internals.
func (cl *Cluster) inproc(i int) *device { return cl.devices[i].be.(*device) }

// inprocDevices returns every device's in-process backend.
func (cl *Cluster) inprocDevices() []*device {
	out := make([]*device, len(cl.devices))
	for i := range cl.devices {
		out[i] = cl.inproc(i)
	}
	return out
}
