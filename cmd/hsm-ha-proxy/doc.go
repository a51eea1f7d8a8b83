// Command hsm-ha-proxy is the pkcs11-ha sidecar: it gives applications in any language the library's
// high-availability signing and decryption over HTTP/JSON (API v1; docs/ARCHITECTURE.md, "The sidecar").
//
// Usage:
//
//	hsm-ha-proxy serve --config FILE [--log-level info] [--log-format json] [--metrics-addr HOST:PORT]
//	hsm-ha-proxy status [--socket PATH | --addr https://HOST:PORT --cert FILE --key FILE --ca FILE] [--json | --ready | --live]
//	hsm-ha-proxy check --config FILE [--json] [--replicas N]
//	hsm-ha-proxy upgrade --pid-file FILE [--timeout 2m]
//
// serve reads the library's YAML config plus its server: and clients: sections, opens the cluster and
// serves on server.listen (default unix:///run/hsm-ha-proxy.sock, mode 0600; tcp://HOST:PORT requires
// mutual TLS). SIGTERM or SIGINT stops accepting, lets in-flight requests finish within
// server.shutdown_grace (default 10s), closes the cluster (bounded by policy.close_timeout), removes the
// socket and exits 0; a second signal exits at once. SIGHUP re-reads the config file and replaces the
// clients: section and, on a tcp:// listener, the server.tls certificate, key and client CA (new
// connections use them), and reads the partitions' PINs again: a partition whose login failed on a device
// tries a changed PIN there once (nothing else is reloaded).
//
// SIGUSR2 is a hot upgrade (docs/upgrades.md): the binary at the path serve was started as runs as a new
// process that inherits the listening sockets and takes over the connections, the PKCS#11 sessions and
// logins; the old process exits once it has handed them over, or keeps serving if the new one does not
// become ready within server.upgrade_timeout. server.pid_file names the serving process. `upgrade` sends
// SIGUSR2 to the pid in that file and waits: exit 0 once a new process serves and the old one is gone.
//
// serve --metrics-addr also serves /metrics (only) over plain HTTP on HOST:PORT, for Prometheus.
//
// status prints the device table (device, region, tier, state, breaker, EWMA latency, in-flight) from
// GET /v1/status; the caller must be a configured client. status --ready and --live are for exec probes:
// exit 0 when /readyz says ready (or /healthz answers), 1 otherwise, nothing printed on success.
//
// check is a preflight: it connects to every device of the config as serve would (pkcs11ha.Inspect), does
// nothing else, and reports devices, tokens, logins, probe latency, keys compared across devices, the
// session budget for N replicas, and advice from the deployment guidance. It exits 0 when everything is
// reachable and consistent, 1 for problems, 2 for a config or usage error.
//
// The demo (four SoftHSM2 devices behind this sidecar, with a scripted failover) is its own command,
// lab/cmd/hsm-ha-demo: this binary links neither the test harness nor package testing (deps_test.go).
package main
