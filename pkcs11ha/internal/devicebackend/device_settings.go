package devicebackend

import "time"

// The device backend reads its configuration from these, not from the library's Config: the library
// binds the config and policy (pkcs11ha/config.go, policy.go) and hands the backend what it needs
// (docs/ARCHITECTURE.md, "Device backend").

// DeviceSpec is what the backend reads of a device's configuration (the library's DeviceConfig).
type DeviceSpec struct {
	Name      string
	Module    string
	ModuleEnv map[string]string
	// TokenSerials picks this device's token for a partition by serial (partition -> serial).
	TokenSerials map[string]string
}

// PartitionSpec is what the backend reads of a partition's configuration (the library's PartitionConfig).
type PartitionSpec struct {
	Name        string
	TokenLabel  string
	TokenSerial string
}

// Options are the policy settings the backend uses, as the library resolved them.
type Options struct {
	OperationTimeout time.Duration // a call's deadline when its context has none (worker.go)
	AdminTimeout     time.Duration // an admin call's deadline when its context has none (worker.go)
	SessionPoolSize  int
	ReinitGrace      time.Duration
	InitTimeout      time.Duration
	CloseTimeout     time.Duration
	MaxRetired       int // 0: no cap of its own (MaxStuckCalls bounds what retired instances hold)
	MaxStuckCalls    int
	P11KitInstances  int
}

// Settings is the backend's view of a cluster's configuration: devices and partitions in config
// order, each partition's PIN, and the options.
type Settings struct {
	Devices    []DeviceSpec
	Partitions []PartitionSpec
	PINs       []string // per partition; never printed
	Own        Options
	// WorkerCmd starts a device worker (policy.isolation process): the program's own binary unless the
	// library was given another.
	WorkerCmd []string
}
