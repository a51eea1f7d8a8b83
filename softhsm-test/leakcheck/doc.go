// Package leakcheck is the goroutine-leak check shared by the test binaries that drive pkcs11-ha against
// SoftHSM devices run as p11-kit server processes.
//
// It is goleak with one documented exception (docs/ARCHITECTURE.md, "Facts about SoftHSM and p11-kit",
// "Calls that never return"): p11-kit-client 0.24 can leave calls blocked for good when its server is
// SIGKILLed with several calls in flight on one module instance, even after the connection is closed. The library cannot
// release such a call; it abandons it at its deadline, retires the module instance and reports it (Status:
// StuckCalls). A test that may cause this closes its cluster with
// CloseCluster (or calls Allow(Settle(...)) before closing it), and exactly that many goroutines blocked in
// a miekg/pkcs11 cgo call are then tolerated at the end of the binary; anything else still running is a leak.
package leakcheck
