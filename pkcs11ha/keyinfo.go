package pkcs11ha

import (
	"crypto"
	"encoding/hex"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// KeyInfo describes a key of a partition as the cluster sees it.
type KeyInfo struct {
	Label     string
	ID        string // CKA_ID in hex
	Algorithm string
	Public    crypto.PublicKey
	Devices   []string          // devices that hold the reference key
	Excluded  map[string]string // device -> why it does not serve this key ("missing", "different public key")
	// Certificate is the DER of the X.509 certificate the devices hold for this key (same CKA_ID or label,
	// same public key; the majority's when they differ), or nil. It must not be modified.
	Certificate []byte
	// Fingerprint is the hex SHA-256 of the reference public key's SubjectPublicKeyInfo (Fingerprint).
	Fingerprint string
}

func hexID(id []byte) string { return hex.EncodeToString(id) }

// Algorithm names used in status and the sidecar API (KeyInfo.Algorithm); the device backend names a
// key's algorithm when it lists the token.
const (
	AlgRSA2048 = devicebackend.AlgRSA2048 // "RSA_2048"
	AlgECP256  = devicebackend.AlgECP256  // "EC_P256"
	AlgECP384  = devicebackend.AlgECP384  // "EC_P384"
	AlgECP521  = devicebackend.AlgECP521  // "EC_P521"
	AlgEd25519 = devicebackend.AlgEd25519 // "ED25519"
)
