// Package sidecarclient is the Go client of the hsm-ha-proxy sidecar (API v1, HTTP/JSON over a unix
// socket or mutual TLS). A *Key implements crypto.Signer and crypto.Decrypter by calling the sidecar, so
// the same application code runs against an in-process *pkcs11ha.Key or through the sidecar:
//
//	c := sidecarclient.Dial("/run/hsm-ha-proxy.sock")
//	defer c.Close()
//	key, err := c.Key(ctx, "payments", "tls-key")
//	sig, err := key.SignContext(ctx, digest, crypto.SHA256)
//
// Signer options map to the API's algorithm names (SignAlgorithm): crypto.SHA256/384/512 on an RSA key is
// RSA_PKCS1_SHA256/384/512, *rsa.PSSOptions is RSA_PSS_SHA256/384/512 (the salt is always the hash length:
// rsa.PSSSaltLengthEqualsHash or the hash size, anything else is refused), on an ECDSA key it is
// ECDSA_SHA256/384/512 (DER signatures) and an Ed25519 key signs the message itself (crypto.Hash(0)).
// Decrypter options map to RSA_PKCS1 (nil or *rsa.PKCS1v15DecryptOptions) and RSA_OAEP_SHA1/SHA256
// (*rsa.OAEPOptions, MGF1 with the same hash, no label) (DecryptAlgorithm).
//
// Errors from the sidecar are *APIError values carrying the HTTP status and the API's error code (the
// sidecarapi.Code* constants). A refused decryption matches rsa.ErrDecryption and a 504 matches
// context.DeadlineExceeded under errors.Is, as the in-process library's errors do.
//
// The request and answer bodies, the status table and the algorithm names are package sidecarapi's,
// the same types the sidecar encodes. The package is pure Go: it does not import package pkcs11ha (and
// so needs no cgo).
package sidecarclient
