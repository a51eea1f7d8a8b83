package devicebackend

import (
	"context"
	"time"
)

// Backend is the device backend: what the cluster asks of one device, whether its PKCS#11 module runs in
// this process (*Device, policy.isolation "none") or in a worker process of its own (*workerDevice,
// "process"; docs/ARCHITECTURE.md, "Process model"). The router, the catalogue, the monitors and both
// doors of the sidecar see only this interface.
type Backend interface {
	// Open brings the device up: module loaded, tokens found, logged in, keys listed.
	Open(ctx context.Context) error
	// Probe recovers the device when it was seen down (re-initialise, reopen) and checks each open
	// partition's token (C_GetTokenInfo).
	Probe(ctx context.Context, othersServing bool) error
	// Run executes op on partition pi, with the session-level recovery of the error table.
	Run(ctx context.Context, pi int, op *Op) ([]byte, error)
	// Admin executes a management operation on partition pi (admin.go), returning at ctx's end.
	Admin(ctx context.Context, pi int, op *AdminOp) (*AdminResult, error)
	// Keys is a snapshot of partition pi's keys by label; nil when the partition is not open.
	Keys(pi int) map[string]*KeyObject
	// SecretKeys is a snapshot of partition pi's secret keys (AES, HMAC) by label; nil when not open.
	SecretKeys(pi int) map[string]*SecretObject
	// Partition reports partition pi's state on the device.
	Partition(pi int) PartInfo
	// UsePIN makes pin partition pi's PIN; it reports whether the partition, refused before with another
	// PIN, gets one new try at the next probe.
	UsePIN(pi int, pin string) bool
	// Counts returns the device's recovery accounts for Status.
	Counts() Counts
	// Shares reports whether the device shares its module instance with o (a Luna client's appliances).
	Shares(o Backend) bool
	// SetHooks installs the cluster's callbacks: keysChanged after a (re)open, down when traffic proved
	// the device down.
	SetHooks(keysChanged func(), down func(reason string))
	// NoteError records a verdict of the cluster about the device (a bad signature) as its last error.
	NoteError(err error)
	// Close releases the device (its module reference, or its worker process), waiting at most timeout.
	Close(timeout time.Duration)
}

// PartInfo is one partition's state on one device.
type PartInfo struct {
	Open      bool   // tokens found, logged in, on the device's live module instance
	CredFatal string // why the partition is unusable (its PIN was refused), or ""
	Logins    int64  // C_Login calls so far
	PINHash   [32]byte
}

// Counts are a device's recovery accounts.
type Counts struct {
	Reinits, Retired, Stuck int64
	LastErr                 *LastError
	CapRefusal              string // why the last re-init was refused (max_stuck_calls), or ""
	// Worker process accounts (zero in process): restarts of the worker and its last exit.
	WorkerPID      int
	WorkerRestarts int64
	WorkerExit     string
	// Lanes and LanesOpen: the device's module instances (lanes.go) and how many of them serve every
	// partition; both 0 for a device without lanes.
	Lanes, LanesOpen int
}
