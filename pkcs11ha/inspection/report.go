package inspection

import "time"

// Report is what pkcs11ha.Inspect found: every device in config order, and every key of every partition compared
// across devices. The JSON field names are stable: `hsm-ha-proxy check --json` prints them. It never
// contains a PIN.
type Report struct {
	LocalRegion     string            `json:"local_region"`
	SessionPoolSize int               `json:"session_pool_size"` // policy.session_pool_size
	Devices         []DeviceReport    `json:"devices"`
	Partitions      []PartitionReport `json:"partitions"`
}

// DeviceReport is one device as pkcs11ha.Inspect saw it.
type DeviceReport struct {
	Name         string `json:"name"`
	Region       string `json:"region"`
	Local        bool   `json:"local"` // region is local_region
	Tier         int    `json:"tier"`
	TierOverride bool   `json:"tier_override"` // tier: set in the config rather than derived from the region
	Module       string `json:"module"`        // module path as configured
	// Reachable: the module answered and at least one partition's token was found on it.
	Reachable  bool   `json:"reachable"`
	Error      string `json:"error,omitempty"`       // why not reachable
	ErrorClass string `json:"error_class,omitempty"` // the error's class ("device_down", ...)
	// Abandoned names PKCS#11 calls that did not return within their deadline; they were left running in
	// the module (never waited on) and the device counts as not reachable.
	Abandoned []string `json:"abandoned_calls,omitempty"`
	// OpenTime is how long loading the module, finding the tokens, logging in and listing keys took.
	OpenTime   time.Duration     `json:"open_ns"`
	Library    *LibraryInfo      `json:"library,omitempty"`
	Latency    *LatencyReport    `json:"probe_latency,omitempty"`
	Partitions []DevicePartition `json:"partitions"` // config order
}

// LibraryInfo is the module's C_GetInfo.
type LibraryInfo struct {
	Manufacturer string `json:"manufacturer"`
	Description  string `json:"description"`
	Version      string `json:"version"`          // library version, "2.6"
	Cryptoki     string `json:"cryptoki_version"` // PKCS#11 version the module implements
}

// LatencyReport is the duration of a few C_GetTokenInfo calls on one of the device's tokens, the call
// health probes make.
type LatencyReport struct {
	Samples int           `json:"samples"`
	Min     time.Duration `json:"min_ns"`
	Median  time.Duration `json:"median_ns"`
	Max     time.Duration `json:"max_ns"`
}

// DevicePartition is one partition on one device.
type DevicePartition struct {
	Name       string     `json:"name"`
	TokenFound bool       `json:"token_found"` // a token with the partition's label (or serial) is on the device
	Token      *TokenInfo `json:"token,omitempty"`
	LoggedIn   bool       `json:"logged_in"`
	// LoginAttempts counts C_Login calls made for this partition on this device: at most one, a rejected
	// PIN is never tried again.
	LoginAttempts int64  `json:"login_attempts"`
	Error         string `json:"error,omitempty"` // why the partition did not open; never the PIN
	ErrorClass    string `json:"error_class,omitempty"`
	Keys          int    `json:"keys"` // labelled private keys found
	// SessionsPerClient is the most sessions one Cluster (one process: one sidecar replica) opens on this
	// token: the session pool as the token's max session count caps it, plus the login session.
	SessionsPerClient int `json:"sessions_per_client"`
}

// TokenInfo is the token's C_GetTokenInfo.
type TokenInfo struct {
	Label        string       `json:"label"`
	Serial       string       `json:"serial"`
	Manufacturer string       `json:"manufacturer"`
	Model        string       `json:"model"`
	Firmware     string       `json:"firmware"` // "2.6"
	Hardware     string       `json:"hardware"`
	MaxSessions  SessionCount `json:"max_sessions"` // ulMaxSessionCount
	Sessions     SessionCount `json:"sessions"`     // ulSessionCount, this check's own sessions included
	// OwnSessions is how many of Sessions this inspection had open when the token answered.
	OwnSessions int `json:"own_sessions"`
}

// SessionCount is a CK_ULONG session count as a token reports it.
type SessionCount struct {
	// Kind is SessionsCount (Value holds the number), SessionsNoLimit (CK_EFFECTIVELY_INFINITE: a
	// maximum without a limit) or SessionsUnknown (CK_UNAVAILABLE_INFORMATION).
	Kind  string `json:"kind"`
	Value uint64 `json:"value"`
}

// The kinds of SessionCount.
const (
	SessionsCount   = "count"
	SessionsNoLimit = "no_limit"
	SessionsUnknown = "unknown"
)

// PartitionReport is every key label found in one partition on any device, sorted by label.
type PartitionReport struct {
	Name string      `json:"name"`
	Keys []KeyReport `json:"keys"`
	// SecretKeys compares the AES and HMAC keys the same way; their Fingerprint is the key check value
	// (docs/ARCHITECTURE.md, "Secret keys"), their KeyType "AES" or "HMAC".
	SecretKeys []KeyReport `json:"secret_keys,omitempty"`
}

// KeyReport compares one (partition, label) across devices. The reference is the public key most of the
// devices holding the label share, config order breaking ties: the key Open routes to.
type KeyReport struct {
	Label       string        `json:"label"`
	KeyType     string        `json:"key_type"` // of the reference: "RSA", "EC" or "EdDSA"
	Bits        int           `json:"bits"`
	Algorithm   string        `json:"algorithm"`   // "RSA_2048", "EC_P256", ... (as in the sidecar API)
	Fingerprint string        `json:"fingerprint"` // hex SHA-256 of the reference's SubjectPublicKeyInfo DER
	Consistent  bool          `json:"consistent"`  // no device is KeyDifferent or KeyMissing
	Devices     []KeyOnDevice `json:"devices"`     // every device, config order
}

// KeyOnDevice is one key label on one device.
type KeyOnDevice struct {
	Device      string `json:"device"`
	Status      string `json:"status"` // KeyMatch, KeyDifferent, KeyMissing or KeyUnchecked
	KeyType     string `json:"key_type,omitempty"`
	Bits        int    `json:"bits,omitempty"`
	Algorithm   string `json:"algorithm,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"` // hex SHA-256 of this device's SPKI DER
}

// The statuses of KeyOnDevice.
const (
	KeyMatch     = "match"     // holds the reference key
	KeyDifferent = "different" // holds another public key under the same label: Open excludes it for this key
	KeyMissing   = "missing"   // the partition is open but has no key with this label: excluded as well
	KeyUnchecked = "unchecked" // the partition did not open on this device (unreachable, login failed, no token)
)

// Options tune pkcs11ha.Inspect; zero fields take the defaults.
type Options struct {
	// OpenTimeout bounds the rest of each device's open once its module is loaded (token lookup, login,
	// key listing); past it the device is reported stuck. Default 30s.
	OpenTimeout time.Duration
	// LatencySamples is how many C_GetTokenInfo calls time each device. Default 5.
	LatencySamples int
}
