// Package proxy is the HTTP/JSON server of the hsm-ha-proxy sidecar (API v1; docs/ARCHITECTURE.md, "The
// sidecar"): it exposes the keys of a pkcs11ha.Cluster to clients on a unix socket (identified by SO_PEERCRED
// uid/gid) or on TCP with mutual TLS (identified by the client certificate's URI/DNS SAN, else its CN), and
// authorises each request against the partitions granted in the config's clients: section.
//
// Endpoints:
//
//	GET  /v1/partitions/{p}/keys                  {"keys":[KEY...]}
//	GET  /v1/partitions/{p}/keys/{label}          KEY
//	POST /v1/partitions/{p}/keys/{label}/sign     {"digest"|"message":b64,"algorithm":...} -> {"signature":b64,"device":...}
//	POST /v1/partitions/{p}/keys/{label}/decrypt  {"ciphertext":b64,"algorithm":...} -> {"plaintext":b64}
//	GET  /v1/status                               {"ready":bool,"devices":[...]}
//	GET  /healthz, /readyz, /metrics
//
// The bodies are the types of package sidecarapi, which the Go client (pkcs11ha/sidecarclient) decodes;
// errors are {"error":{"code":...,"message":...}} with its Code* constants.
// Every /v1 request runs under policy.request_timeout; bodies are capped at 1 MiB. Each request is
// written to the access log (client, partition, key, operation, algorithm, device, outcome, latency) —
// never a payload, a signature or a PIN.
//
// Listen creates the listener (unix socket with mode 0600 and stale-socket handling, or TLS requiring
// client certificates); Server.Serve serves until its context ends, then drains in-flight requests within
// server.shutdown_grace. ReloadClients swaps the client table and ReloadTLS the listener's certificates
// (the sidecar calls both on SIGHUP).
package proxy
