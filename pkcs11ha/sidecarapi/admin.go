package sidecarapi

// Key management for clients granted admin: true (docs/keys.md, "HTTP API"):
//
//	GET    /v1/partitions/{p}/inventory      -> Inventory (what every device holds, read from each)
//	POST   /v1/partitions/{p}/keys           CreateKeyRequest -> 201 CreatedKey (generate, or import with pkcs8)
//	DELETE /v1/partitions/{p}/keys/{label}   -> 204 (tombstoned and destroyed on every reachable device)
//	POST   /v1/partitions/{p}/sync[?dry_run=true] -> SyncReport

// CreateKeyRequest generates a key pair (Algorithm) or imports one (PKCS8) on every device.
type CreateKeyRequest struct {
	Label     string `json:"label"`
	Algorithm string `json:"algorithm,omitempty"` // rsa-2048, rsa-3072, rsa-4096, ec-p256, ec-p384 (generate)
	ID        string `json:"id,omitempty"`        // CKA_ID in hex; default the SHA-1 of the public key
	PKCS8     string `json:"pkcs8,omitempty"`     // base64 PKCS#8 DER private key (import)
}

// CreatedKey answers a creation: the key, and its public-key fingerprint (hex SHA-256 of the SPKI).
type CreatedKey struct {
	KeyInfo
	Fingerprint string `json:"fingerprint"`
}

// Inventory is pkcs11ha.Inventory on the wire.
type Inventory struct {
	Partition   string            `json:"partition"`
	Replication string            `json:"key_replication"`
	MinReplicas int               `json:"min_key_replicas"`
	Devices     []DeviceInventory `json:"devices"`
}

// DeviceInventory is one device of an Inventory.
type DeviceInventory struct {
	Device     string    `json:"device"`
	Error      string    `json:"error,omitempty"`
	Keys       []KeyCopy `json:"keys"`
	Tombstones int       `json:"tombstones"`
	KEKs       int       `json:"keks"`
}

// KeyCopy is one key pair on one device.
type KeyCopy struct {
	Label           string `json:"label"`
	ID              string `json:"id"`
	Algorithm       string `json:"algorithm"`
	Fingerprint     string `json:"fingerprint"`
	Sign            bool   `json:"sign"`
	Decrypt         bool   `json:"decrypt"`
	Extractable     bool   `json:"extractable"`
	Sensitive       bool   `json:"sensitive"`
	WrapWithTrusted bool   `json:"wrap_with_trusted"`
	Copies          int    `json:"copies"`
}

// SyncReport is pkcs11ha.SyncReport on the wire.
type SyncReport struct {
	Partition   string            `json:"partition"`
	DryRun      bool              `json:"dry_run"`
	Actions     []SyncAction      `json:"actions"`
	Missing     []SyncAction      `json:"missing"`
	Drift       []Drift           `json:"drift"`
	Unreachable map[string]string `json:"unreachable"`
}

// SyncAction is one change of a sync on one device.
type SyncAction struct {
	Action      string `json:"action"`
	Device      string `json:"device"`
	Label       string `json:"label"`
	Fingerprint string `json:"fingerprint"`
	From        string `json:"from,omitempty"`
	Why         string `json:"why"`
	Error       string `json:"error,omitempty"`
}

// Drift is a label held with different keys by different devices.
type Drift struct {
	Label        string            `json:"label"`
	Fingerprints map[string]string `json:"fingerprints"`
}

// Error codes of key management.
const (
	// 403: the client is not granted admin: true.
	CodeNotAdmin = "not_admin"
	// 409: a key with this label exists (or another was created at the same moment and won).
	CodeKeyExists = "key_exists"
	// 503: the key could not be put on every reachable device and on min_key_replicas (the message names
	// the devices that refused), or no trusted key-encryption key is shared (keys init-kek).
	CodeReplicationFailed = "replication_failed"
)
