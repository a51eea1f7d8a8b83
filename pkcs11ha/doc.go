// Package pkcs11ha is a client-side high-availability layer for PKCS#11 HSMs: one crypto.Signer /
// crypto.Decrypter (Key) backed by the same key cloned on several devices, routed to the nearest healthy
// device with circuit breakers, per-attempt deadlines, retries and background recovery.
//
// The package holds the config schema (LoadConfig; policy.go maps the policy onto the router's, the
// probes' and its own settings), the cluster (Open, Cluster.Key, Status, Close; WithOutcome reports which
// device served a call), the key catalogue and key management, and a one-shot inspection of every device
// that routes nothing (Inspect, behind `hsm-ha-proxy check`). The device backend over
// github.com/miekg/pkcs11 (module registry, token resolution, sessions, login, key lookup,
// re-initialisation, worker processes) is in an internal package, and so is the one table that
// classifies PKCS#11 errors into this package's recovery classes (Class); the error types are this
// package's names for it. Routing policy lives in package failover and health tracking in package health;
// neither knows PKCS#11.
package pkcs11ha
