// Package chaos is the chaos suite of pkcs11-ha: every fault the harness can inject (kill, SIGSTOP, a
// hung or slow relay, restart, connection reset, flapping, a region down, all devices down, and key and
// PIN faults on one device), each under concurrent load with every result verified, and the invariants
// of the design asserted per scenario (see chaos_test.go for the list and the results table).
//
// The non-test part of the package is the load generator and result recorder (load.go), reusable by the
// benchmarks and the demo: Load runs N workers, each operation with its own caller deadline, against
// anything with SignDevice/DecryptDevice (a sidecar client key, or a *pkcs11ha.Key reporting through
// pkcs11ha.WithOutcome); Recorder keeps every
// operation (latency, error, serving device, verification result) tagged with the phase of the fault
// script it started in, Summarize turns them into the figures of the results table, and
// Recorder.Timeline (timeline.go) into a timeline picture's input.
//
// Run the short form with `go test ./lab/chaos/` (part of `make test`, at most 3 minutes) and the
// long form with `CHAOS_LONG=1` (`make chaos`: at least 100,000 operations, minutes of flapping). The table
// is logged and written to $CHAOS_RESULTS (default chaos-results.txt in the repository root for the long
// form, a temporary directory for the short one), with one timeline picture per scenario (SVG and PNG, see
// package timeline and Recorder.Timeline: every call's latency and serving device, the fault window
// shaded) in chaos-timelines/ next to it.
package chaos
