// Package sidecarapi defines the wire format of the hsm-ha-proxy sidecar's HTTP/JSON API v1: the request
// and response bodies, the status table, the error body and its codes, and the algorithm names. The
// sidecar (cmd/hsm-ha-proxy) encodes these types and its Go client (pkcs11ha/sidecarclient) decodes them,
// so the two cannot drift apart; clients in other languages can read the JSON tags as the schema.
//
// Byte fields (digest, message, signature, ciphertext, plaintext) are standard base64 with padding.
// Every error answer is an ErrorBody whose code is one of the Code* constants.
//
// The package is pure Go with no dependencies beyond the standard library: it must not import package
// pkcs11ha (cgo), so that the client stays cgo-free. docs/ARCHITECTURE.md, "The sidecar", describes the API.
package sidecarapi
