// Package health tracks how well a device is doing, independently of how it is reached.
//
// It provides the pieces the router and the device layer share: a Clock abstraction (so every
// time-dependent decision can be tested with a fake clock), a peak-EWMA latency tracker that is read
// lock-free on the routing hot path, a decaying latency histogram used to choose hedging delays, and
// a Monitor that probes a device on its own schedule (with jitter, thresholds and a per-probe
// deadline) and runs the up/degraded/down state machine.
//
// The package knows nothing about PKCS#11: a probe is just a function returning an error.
package health
