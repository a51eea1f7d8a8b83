// Package pkcs11ha is a client-side high-availability layer for PKCS#11 HSMs: one crypto.Signer /
// crypto.Decrypter (Key) backed by the same key cloned on several devices, routed to the nearest healthy
// device with circuit breakers, per-attempt deadlines, retries and background recovery.
//
// The package holds the config schema (LoadConfig; policy.go maps the policy onto the router's, the
// probes' and its own settings), the cluster (Open, Cluster.Key, Status, Close; WithOutcome reports which
// device served a call), the device backend over github.com/miekg/pkcs11 (module registry, token
// resolution, sessions, login, key lookup, re-initialisation), a one-shot inspection of every device that
// routes nothing (Inspect, behind `hsm-ha-proxy check`) and the one table that classifies PKCS#11 errors
// into this package's recovery classes (class.go). Routing policy lives in package failover and health
// tracking in package health; neither knows PKCS#11.
package pkcs11ha
