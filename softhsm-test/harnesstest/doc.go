// Package harnesstest holds the testing.TB helpers of the SoftHSM2 harness (package softhsmtest): Start
// runs a Topology for the length of one test, SoftKeys hands out the process-wide software keys,
// DeviceObject reads an object from one device itself.
//
// It is the only harness package that imports "testing". The harness itself stays an ordinary package
// so that the demo (lab/cmd/hsm-ha-demo) and the benchmark (lab/cmd/hsm-bench) can use it, and so
// that nothing of it reaches the deployed binary (cmd/hsm-ha-proxy) by way of a test helper.
//
// Typical use:
//
//	topo := harnesstest.Start(t, softhsmtest.Options{})
//	err := topo.WriteConfig(filepath.Join(topo.Dir, "hsm-ha.yaml"), softhsmtest.ConfigOptions{})
//	...
//	require.NoError(t, topo.Device("eastus-1").Kill())
package harnesstest
