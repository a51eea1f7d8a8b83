// Command hsm-ha-demo shows pkcs11-ha at work: four SoftHSM2 devices in two regions (run by the test
// harness, package softhsmtest) behind the real sidecar, `hsm-ha-proxy serve`, started as a child
// process, with background load and a scripted failover (kill a local device, hang the other, watch DR
// take over, bring both back).
//
// Usage:
//
//	hsm-ha-demo [--duration D] [--no-failover] [--workers N] [--rate R] [--step D] [--dr-delay D] [--report DIR] [--plain] [--keep] [--proxy-bin PATH] [--policy YAML]
//
// The sidecar binary is --proxy-bin, else hsm-ha-proxy in the directory of this program (`make run`
// builds both there), else hsm-ha-proxy on PATH.
//
// At the end (also after a Ctrl-C, once the load has started) the demo draws the run with package
// timeline into --report DIR (default: the current directory): failover-timeline.svg and .png.
//
// The demo is a command of its own, not a subcommand of hsm-ha-proxy, so that the binary operators deploy
// links neither the harness nor the testing package (cmd/hsm-ha-proxy's deps_test.go checks that).
package main
