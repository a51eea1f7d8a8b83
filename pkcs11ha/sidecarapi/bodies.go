package sidecarapi

import "time"

// SignRequest is the body of POST /v1/partitions/{p}/keys/{label}/sign: Digest (the hash of the message,
// of the algorithm's hash size) for every algorithm but ED25519, which signs Message itself.
type SignRequest struct {
	Digest    string `json:"digest,omitempty"`  // base64
	Message   string `json:"message,omitempty"` // base64, ED25519 only
	Algorithm string `json:"algorithm"`         // one of the sign Alg* names
}

// SignResponse answers a sign request: the signature (DER for ECDSA) and the device that made it.
type SignResponse struct {
	Signature string `json:"signature"` // base64
	Device    string `json:"device"`
}

// DecryptRequest is the body of POST /v1/partitions/{p}/keys/{label}/decrypt.
type DecryptRequest struct {
	Ciphertext string `json:"ciphertext"` // base64, of the RSA modulus size
	Algorithm  string `json:"algorithm"`  // one of the decrypt Alg* names
}

// DecryptResponse answers a decrypt request.
type DecryptResponse struct {
	Plaintext string `json:"plaintext"` // base64
}

// KeyInfo is the API's KEY object: GET /v1/partitions/{p}/keys/{label}, and each entry of KeyList.
type KeyInfo struct {
	Label     string   `json:"label"`
	ID        string   `json:"id"`         // CKA_ID in lower-case hex
	Algorithm string   `json:"algorithm"`  // "RSA_2048", "EC_P256", "EC_P384", "EC_P521", "ED25519"
	PublicKey string   `json:"public_key"` // PEM SubjectPublicKeyInfo
	Devices   []string `json:"devices"`    // devices holding the reference key (never null)
}

// KeyList answers GET /v1/partitions/{p}/keys.
type KeyList struct {
	Keys []KeyInfo `json:"keys"`
}

// Status answers GET /v1/status: the device table, in config order.
type Status struct {
	Ready   bool           `json:"ready"` // every partition has an up device holding all its keys
	Devices []DeviceStatus `json:"devices"`
}

// DeviceStatus is one device of Status: the library's pkcs11ha.DeviceStatus on the wire. It never
// contains a PIN.
type DeviceStatus struct {
	Name             string            `json:"name"`
	Region           string            `json:"region"`
	Tier             int               `json:"tier"`
	State            string            `json:"state"`            // "up" | "degraded" | "down"
	Reason           string            `json:"reason,omitempty"` // what keeps the device out (pkcs11ha.DeviceStatus.Reason)
	Since            time.Time         `json:"since"`
	Breaker          string            `json:"breaker"` // "closed" | "half-open" | "open"
	EWMA             time.Duration     `json:"ewma_ns"`
	InFlight         int               `json:"in_flight"`
	Abandoned        int               `json:"abandoned"`
	LastError        string            `json:"last_error,omitempty"`
	LastErrorClass   string            `json:"last_error_class,omitempty"`
	Reinits          int64             `json:"reinits"`
	RetiredInstances int64             `json:"retired_instances"`         // module instances retired with calls stuck in them
	StuckCalls       int64             `json:"stuck_calls"`               // calls stuck in those instances; they no longer count against the device
	WorkerPID        int               `json:"worker_pid,omitempty"`      // the device's worker process (isolation: process)
	WorkerRestarts   int64             `json:"worker_restarts,omitempty"` // ends of its worker processes
	WorkerExit       string            `json:"worker_exit,omitempty"`     // how the last one ended
	Lanes            *LaneStatus       `json:"lanes,omitempty"`           // module instances (p11-kit-client.so devices)
	Partitions       []PartitionStatus `json:"partitions"`
	// ExcludedKeys maps "partition/label" to why this device does not serve that key.
	ExcludedKeys map[string]string `json:"excluded_keys,omitempty"`
}

// LaneStatus is pkcs11ha.LaneStatus on the wire: a device's module instances and those serving.
type LaneStatus struct {
	Total int `json:"total"`
	Open  int `json:"open"`
}

// PartitionStatus is one partition on one device.
type PartitionStatus struct {
	Name   string `json:"name"`
	Open   bool   `json:"open"`
	Error  string `json:"error,omitempty"`
	Logins int64  `json:"logins"` // C_Login calls on the device for the partition
}
