package sidecarapi

// Secret keys (AES and HMAC) live under /v1/partitions/{p}/secret-keys, apart from the key pairs, so that a
// label may name one of each and the KEY object keeps its shape (docs/encryption.md).

// MAC algorithm names (MACRequest.Algorithm, VerifyMACRequest.Algorithm). Empty: the key's own hash (a
// generic secret's default: HMAC_SHA256).
const (
	AlgHMACSHA256 = "HMAC_SHA256"
	AlgHMACSHA384 = "HMAC_SHA384"
	AlgHMACSHA512 = "HMAC_SHA512"
)

// CodeMACMismatch (400): verify-mac's MAC is not the key's MAC of the data.
const CodeMACMismatch = "mac_mismatch"

// SecretKeyInfo is the API's SECRET KEY object: GET /v1/partitions/{p}/secret-keys/{label}, and each
// entry of SecretKeyList. It never carries the key's value.
type SecretKeyInfo struct {
	Label      string   `json:"label"`
	ID         string   `json:"id"`          // CKA_ID in lower-case hex
	Algorithm  string   `json:"algorithm"`   // "AES_128", "AES_256", "HMAC_SHA256", ...
	CheckValue string   `json:"check_value"` // key check value, hex: the same key has the same one everywhere
	Devices    []string `json:"devices"`     // devices holding the reference key (never null)
}

// SecretKeyList answers GET /v1/partitions/{p}/secret-keys.
type SecretKeyList struct {
	Keys []SecretKeyInfo `json:"keys"`
}

// EncryptRequest is the body of POST /v1/partitions/{p}/secret-keys/{label}/encrypt (AES-GCM).
type EncryptRequest struct {
	Plaintext string `json:"plaintext"`     // base64, may be empty
	AAD       string `json:"aad,omitempty"` // base64 additional authenticated data, given again to decrypt
}

// EncryptResponse answers an encrypt request: nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes).
type EncryptResponse struct {
	Ciphertext string `json:"ciphertext"` // base64
	Device     string `json:"device"`
}

// SecretDecryptRequest is the body of POST /v1/partitions/{p}/secret-keys/{label}/decrypt. Input that
// does not authenticate is answered 400 decryption_failed and never tried on another device.
type SecretDecryptRequest struct {
	Ciphertext string `json:"ciphertext"` // base64, what encrypt returned
	AAD        string `json:"aad,omitempty"`
}

// SecretDecryptResponse answers a secret-key decrypt request.
type SecretDecryptResponse struct {
	Plaintext string `json:"plaintext"` // base64
	Device    string `json:"device"`
}

// MACRequest is the body of POST /v1/partitions/{p}/secret-keys/{label}/mac.
type MACRequest struct {
	Data      string `json:"data"`                // base64, may be empty
	Algorithm string `json:"algorithm,omitempty"` // HMAC_SHA256, HMAC_SHA384, HMAC_SHA512; empty: the key's
}

// MACResponse answers a mac request.
type MACResponse struct {
	MAC    string `json:"mac"` // base64
	Device string `json:"device"`
}

// VerifyMACRequest is the body of POST /v1/partitions/{p}/secret-keys/{label}/verify-mac. A MAC that does
// not match is answered 400 mac_mismatch.
type VerifyMACRequest struct {
	Data      string `json:"data"` // base64
	MAC       string `json:"mac"`  // base64, full length
	Algorithm string `json:"algorithm,omitempty"`
}

// VerifyMACResponse answers a verify-mac request whose MAC matches.
type VerifyMACResponse struct {
	Valid  bool   `json:"valid"` // always true: a mismatch is an error answer
	Device string `json:"device"`
}
