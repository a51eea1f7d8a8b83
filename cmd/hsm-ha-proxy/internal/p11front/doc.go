// Package p11front is the sidecar's PKCS#11 front end: a server of p11-kit's RPC protocol (the one the
// distributions' stock p11-kit-client.so speaks to `p11-kit server`), so that any PKCS#11 application —
// OpenSSL, GnuTLS, Java's SunPKCS11, pkcs11-tool — uses the HA cluster as an ordinary token, with
// P11_KIT_SERVER_ADDRESS=unix:path=SOCKET and no PIN of its own. See docs/ARCHITECTURE.md, "PKCS#11 front
// end"; the wire codec is package p11rpc.
//
// What a client sees:
//
//   - One slot and token per partition its uid is granted (clients: section, matched by SO_PEERCRED as the
//     HTTP API does, reloaded with it on SIGHUP). Slot ids are the partition's position in the config, so
//     they are stable; token label = partition name, a serial derived from the name, model "pkcs11-ha".
//     An unknown uid gets no slot at all.
//   - Per key the cluster serves, a private-key and a public-key object with the key's CKA_LABEL and CKA_ID,
//     its public attributes, CKA_SENSITIVE true and CKA_EXTRACTABLE false. Ed25519 keys are not presented:
//     no p11-kit client carries CKM_EDDSA, and libp11 0.4.12 (Debian 12's OpenSSL engine) cannot enumerate
//     a token holding one. A key whose devices hold an X.509 certificate for it (same CKA_ID or label, same
//     public key; see pkcs11ha.KeyInfo.Certificate) also gets a CKO_CERTIFICATE object with its CKA_LABEL
//     and CKA_ID: Java's SunPKCS11 KeyStore lists a private key only with its certificate.
//   - Per secret key the cluster serves (pkcs11ha.SecretKeyInfo), a CKO_SECRET_KEY object with its CKA_LABEL,
//     CKA_ID, CKA_KEY_TYPE and CKA_VALUE_LEN, sensitive and not extractable: HMAC keys sign and verify
//     (CKM_SHA256/384/512_HMAC), AES keys encrypt and decrypt (CKM_AES_GCM, the client's CK_GCM_PARAMS;
//     CKM_AES_CBC_PAD, the client's IV), on the devices (secretobjects.go, secretmech.go, secretops.go).
//   - Login is not required (the sidecar holds the partition PIN and access is decided by identity);
//     C_Login succeeds whatever PIN it carries, which is never looked at, logged or kept.
//   - Sign (RSA PKCS#1 v1.5, PSS, ECDSA, raw and hash-and-sign, single- and multi-part) and decrypt (RSA
//     PKCS#1 v1.5, OAEP) go through the cluster: failover, deadlines, breakers and retries happen behind the
//     connection, whose sessions and object handles belong to the front end and survive any device's
//     failure; so do HMAC, AES-GCM and AES-CBC-PAD with secret keys. Verify, encrypt (with a public key), digest and
//     random are done in software.
//   - For clients the table grants admin: true, key management replicated to every device of the partition
//     (admin.go, admingen.go, adminobjects.go): C_GenerateKeyPair (RSA 2048-4096, EC P-256/P-384),
//     C_CreateObject of a key's X.509 certificate, C_DestroyObject, C_SetAttributeValue of CKA_LABEL
//     (rename). Other clients get CKR_TOKEN_WRITE_PROTECTED and see no generation mechanism.
//
// Everything else answers CKR_FUNCTION_NOT_SUPPORTED.
//
// A connection is never dropped while the sidecar runs (p11-kit-client never reconnects), except when its
// framing is broken beyond repair (a truncated frame, frame code 0): a malformed call is answered with a
// PKCS#11 error and costs nothing else, and so is a message over the size limit (skipped unread: data too
// long for the token). Calls that may wait for the cluster are served concurrently (the client pipelines
// them), up to a bound, on the connection's workers; the others are answered at once by the goroutine
// that reads the connection, which spares most calls two goroutine hand-offs. On shutdown the listener
// closes (removing the socket), calls in flight finish within the grace period, then connections close.
package p11front
