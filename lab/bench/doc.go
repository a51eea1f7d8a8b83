// Package bench is `make bench` (run by lab/cmd/hsm-bench): in one run on one machine, what the
// pkcs11-ha layer costs and what it buys, against direct PKCS#11 calls (the limit) and crypto11 (the peer).
//
// It measures five things.
//
//   - [routing] failover.Router.Pick with four members, through testing.Benchmark: ns/op and allocs/op.
//   - [in-process] on one in-process SoftHSM token (a private copy of libsofthsm2.so with its own
//     SOFTHSM2_CONF): direct miekg/pkcs11 with one session per goroutine, a crypto11 v1.6.2 Signer,
//     pkcs11ha with that one device and pkcs11ha with a second local device (a second copy of the library),
//     for ECDSA P-256 and RSA-2048 at 1 and 8 goroutines: ops/s, p50, p99 in a closed loop. One more
//     pkcs11ha row per cell measures verify-after-sign (policy.verify_signatures): RSA with it off (the
//     default verifies RSA), ECDSA with "all" (the default does not verify ECDSA).
//     Every contender runs in a child process of its own (this program again, with its Spec in the
//     environment variable ChildEnv), on the same library copy, configuration and token directory: a
//     module such as libsofthsm2.so is one instance per file path in a process, so three libraries
//     initialising it in one process would share (and fight over) one C_Initialize, and pkcs11ha's module
//     registry refuses a path that another library initialised. Separate processes give each contender the
//     same clean start and the same token. The four children of a cell are started and warmed up one after
//     the other, then take turns: each measures a slice (Cell/Rounds, 0.5 s by default) while the others
//     wait idle, Rounds times, the order rotating, so that a change in the machine's load hits them alike.
//     Ratios are medians of the per-turn ratios; the CPU time per signature of each child is reported too.
//   - [p11-kit] four devices behind relays (softhsmtest's default topology, DR 20 ms one-way): latency with
//     a healthy local pair (and the share of operations served by DR, which must be 0) against direct
//     calls to one local device; the time from losing the whole local region (SIGKILL, or a network
//     partition that hangs every call) to the first successful signature; and p99 (and p99.9, max) with one
//     slow local device — slow from the window's start, slow for 10 s before it, or slow in spells — with
//     and without hedging, with the extra attempts hedging cost (pkcs11ha's own counters).
//   - [front end] the sidecar's PKCS#11 front end against a stock `p11-kit server`: a Go client
//     (miekg/pkcs11, the Direct contender) through the stock p11-kit-client.so, in a child process, at 1
//     and 8 goroutines against (a) `hsm-ha-proxy serve` (the real binary, built by go build unless
//     Options.Sidecar names one) with server.pkcs11 and a cluster over a local pair, and (b) one device's own
//     `p11-kit server`. The cluster reaches its devices on their servers' own sockets
//     (softhsmtest.ConfigOptions.NoRelays), as (b)'s client does: neither path crosses the harness's relay.
//     The two clients take turns as the in-process contenders do; the CPU time per signature of the client,
//     the sidecar and the devices' process groups is read from /proc over each contender's own turns. With
//     Options.ProfileDir the sidecar is built with -tags cpuprofile and writes its CPU profile there.
//   - [upgrade] the upgrade blip: the same client, at the largest goroutine count, signs through the front
//     end while the sidecar is upgraded in place Options.Upgrades times (SIGUSR2 to the pid in
//     server.pid_file). Each upgrade runs in a traced slice of the client (every call's start and latency);
//     the calls that overlap a handover (from the signal until the old process is gone) are reported apart
//     (p50, p99, max), with the failed calls and each handover's durations.
//
// With Options.PlotDir (hsm-bench -plots, default bench-plots/) it also draws, with package timeline,
// the first region-loss trial of each mode (every call's latency and serving device, the region shaded
// while out) and the slow-device latency percentiles with and without hedging, as SVG and PNG.
//
// The table ends with the line `BENCH ha_vs_direct=<ratio> ha_vs_crypto11=<ratio> frontend_vs_p11kit=<ratio>`
// for ECDSA P-256 at 8 goroutines (on one device; the front end against the p11-kit server), each part
// present when its section ran. The 1-minute load average is printed next to every figure: the machines this
// runs on are shared.
package bench
