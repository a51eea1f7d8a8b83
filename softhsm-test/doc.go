// Package softhsmtest runs SoftHSM2 "devices" for tests, chaos suites, benchmarks and demos of pkcs11-ha.
//
// A Topology is a small fleet of devices, by default two in the local region (eastus-1, eastus-2) and two
// in a disaster-recovery region (westus-1, westus-2). Every device holds the same partitions (one SoftHSM
// token per partition, e.g. "payments" and "ledger") and the same keys, generated once in Go and imported
// into every token, so that a key's public key is identical on every device, as on a real HSM HA group.
//
// Each device is its own process: `p11-kit server` in its own process group, exporting that device's
// tokens over a unix socket. Clients do not talk to that socket directly but to a relay in this process
// that forwards the bytes and can inject faults on the wire: one-way delay (Device.SetDelay), a hang
// (Device.Hang), refused and dropped connections (Device.Down) and connection resets (Device.Reset).
// Process faults hit the whole process group: Device.Kill (SIGKILL), Device.Pause / Device.Resume
// (SIGSTOP / SIGCONT) and Device.Restart. Clients load p11-kit-client.so with
// P11_KIT_SERVER_ADDRESS=unix:path=<Device.Socket> (Device.ModulePath and Device.ModuleEnv say exactly
// that); every load of p11-kit-client.so is its own module instance, so one path serves every device.
//
// A device can also be InProcess: a private copy of libsofthsm2.so with its own SOFTHSM2_CONF, loaded
// in the test process. That is the only way to test Ed25519 (p11-kit 0.24 cannot carry CKM_EDDSA over
// its RPC); fault injection is not available for such devices.
//
// Key-material faults for consistency and credential scenarios are set per device in DeviceSpec:
// MissingKeys, DifferentKeys and PINOverride.
//
// Options.Certificates also puts a self-signed X.509 certificate (CN = label) beside every key in every
// token, with the key's CKA_LABEL and CKA_ID, as an operator does for applications that find keys through
// certificates (Java's SunPKCS11); Topology.Certificates and Device.Certificates hold them.
//
// Start is quick (well under a second for the default topology): keys are generated once per process,
// and each distinct token (label, PINs, keys) is initialised and imported once per process with
// softhsm2-util, then copied into every device that holds it. Every copy gets a serial number of its
// own, as partitions on different HSMs have; the key material is identical.
//
// Topology.ConfigYAML writes the pkcs11ha configuration for the topology (the schema: docs/ARCHITECTURE.md,
// "Configuration").
//
// Processes are always reaped: Topology.Close (registered with t.Cleanup by harnesstest.Start, which also
// runs when a test fails or panics) kills every process group and waits until no member is left; servers are
// started with a parent-death signal (on Linux) so that they also die with a test binary that is killed
// or times out. Close also closes every relayed connection, which releases client calls blocked on a
// paused or hanging device (finalizing a module with calls in flight is still the caller's problem).
//
// The harness needs the Debian packages softhsm2, p11-kit and p11-kit-modules (see LookupTools), and opensc
// (pkcs11-tool) for Options.Certificates.
//
// This package does not import "testing": the demo (lab/cmd/hsm-ha-demo) and the benchmark use it as an
// ordinary package, with Start and Close. Tests use the testing.TB helpers of softhsm-test/harnesstest:
//
//	topo := harnesstest.Start(t, softhsmtest.Options{})
//	err := topo.WriteConfig(filepath.Join(topo.Dir, "hsm-ha.yaml"), softhsmtest.ConfigOptions{})
//	...
//	require.NoError(t, topo.Device("eastus-1").Kill())
package softhsmtest
