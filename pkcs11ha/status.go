package pkcs11ha

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// DeviceStatus is one row of Cluster.Status. It never contains a PIN.
type DeviceStatus struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	Tier   int    `json:"tier"`
	State  string `json:"state"` // "up" | "degraded" | "down"
	// Reason says what keeps the device out of rotation or degraded (probes failing, breaker open after N
	// offences until when, abandoned calls at the cap, stuck calls at max_stuck_calls, excluded keys,
	// partitions not open); for a device in rotation, why its health last changed.
	Reason           string        `json:"reason,omitempty"`
	Since            time.Time     `json:"since"`
	Breaker          string        `json:"breaker"` // "closed" | "half-open" | "open"
	EWMA             time.Duration `json:"ewma_ns"`
	InFlight         int           `json:"in_flight"`
	Abandoned        int           `json:"abandoned"`
	LastError        string        `json:"last_error,omitempty"`
	LastErrorClass   string        `json:"last_error_class,omitempty"`
	Reinits          int64         `json:"reinits"`
	RetiredInstances int64         `json:"retired_instances"` // with calls still stuck in them
	// StuckCalls are calls stuck in module instances this device's re-inits retired, each holding an OS
	// thread. They no longer count against the device (not in Abandoned, InFlight or State); see
	// Cluster.StuckCalls for the total and its cap.
	StuckCalls int64 `json:"stuck_calls"`
	// WorkerPID is the device's worker process (policy.isolation "process"; 0 while none runs, and in
	// process), WorkerRestarts counts its ends, and WorkerExit says how the last one ended ("killed: 3
	// calls unanswered ... (signal: killed)", "exited (signal: segmentation fault)").
	WorkerPID      int    `json:"worker_pid,omitempty"`
	WorkerRestarts int64  `json:"worker_restarts,omitempty"`
	WorkerExit     string `json:"worker_exit,omitempty"`
	// Lanes: the module instances of a device reached through p11-kit-client.so
	// (policy.p11kit_client_instances); nil for a device with one instance.
	Lanes *LaneStatus `json:"lanes,omitempty"`

	Partitions []PartitionStatus `json:"partitions"`
	// ExcludedKeys maps "partition/label" to why this device does not serve that key.
	ExcludedKeys map[string]string `json:"excluded_keys,omitempty"`
}

// LaneStatus counts a device's module instances (its lanes) and those serving every partition; the others
// are opening, or wait for the next probe to re-initialise them after the device was seen down.
type LaneStatus struct {
	Total int `json:"total"`
	Open  int `json:"open"`
}

// PartitionStatus is one partition on one device.
type PartitionStatus struct {
	Name  string `json:"name"`
	Open  bool   `json:"open"`
	Error string `json:"error,omitempty"`
	// Logins counts C_Login calls for the partition on the device: one per (re)open of its module
	// instance; a number that keeps growing is a device losing its logins.
	Logins int64 `json:"logins"`
}

// Status returns a snapshot of every device, in config order.
func (cl *Cluster) Status() []DeviceStatus {
	rs := cl.router.Status()
	out := make([]DeviceStatus, len(cl.devices))
	for i, d := range cl.devices {
		hs := health.Status{State: health.StateDown}
		if i < len(cl.monitors) {
			hs = cl.monitors[i].Status()
		}
		bc := d.be.Counts()
		ds := DeviceStatus{
			Name: d.name, Region: d.cfg.Region, Tier: cl.s.cfg.tierOf(i),
			Reason: hs.Reason, Since: hs.Since,
			Reinits: bc.Reinits, RetiredInstances: bc.Retired, StuckCalls: bc.Stuck,
			WorkerPID: bc.WorkerPID, WorkerRestarts: bc.WorkerRestarts, WorkerExit: bc.WorkerExit,
		}
		if bc.Lanes > 0 {
			ds.Lanes = &LaneStatus{Total: bc.Lanes, Open: bc.LanesOpen}
		}
		var ms failover.MemberStatus
		if i < len(rs) {
			ms = rs[i]
			ds.Breaker, ds.EWMA, ds.InFlight, ds.Abandoned = ms.Breaker, ms.EWMA, ms.InFlight, ms.Abandoned
		}
		if e := bc.LastErr; e != nil {
			ds.LastError = e.Msg
			ds.LastErrorClass = e.Class.String()
		}
		for pi, pc := range cl.s.cfg.Partitions {
			p := d.be.Partition(pi)
			ds.Partitions = append(ds.Partitions, PartitionStatus{Name: pc.Name, Open: p.Open, Error: p.CredFatal, Logins: p.Logins})
		}
		for _, cp := range cl.parts {
			cp.mu.RLock()
			for label, e := range cp.keys {
				ds.noteExcluded(cp.name, label, d.name, e.excluded.Load())
			}
			for label, e := range cp.secrets {
				ds.noteExcluded(cp.name, label, d.name, e.excluded.Load())
			}
			cp.mu.RUnlock()
		}
		switch {
		case hs.State == health.StateDown:
			ds.State = "down"
		case hs.State == health.StateDegraded || ds.Breaker != "closed" || ds.Abandoned > 0 || len(ds.ExcludedKeys) > 0:
			ds.State = "degraded"
		default:
			ds.State = "up"
		}
		for _, ps := range ds.Partitions {
			if !ps.Open && ds.State == "up" {
				ds.State = "degraded"
			}
		}
		ds.Reason = reasonOf(hs, ms, &ds, bc.CapRefusal)
		out[i] = ds
	}
	return out
}

// noteExcluded records in ExcludedKeys why device dev does not serve key label of partition, if ex says so.
func (ds *DeviceStatus) noteExcluded(partition, label, dev string, ex *map[string]string) {
	if ex == nil {
		return
	}
	if why, ok := (*ex)[dev]; ok {
		if ds.ExcludedKeys == nil {
			ds.ExcludedKeys = map[string]string{}
		}
		ds.ExcludedKeys[partition+"/"+label] = why
	}
}

// reasonOf says what keeps a device out of rotation, or degraded, most decisive first, "; " between
// them; for a device in rotation with nothing against it, why its health last changed.
func reasonOf(hs health.Status, ms failover.MemberStatus, ds *DeviceStatus, capRefusal string) string {
	var why []string
	switch {
	case hs.State == health.StateDown && capRefusal != "":
		why = append(why, capRefusal) // the probes only see their own symptom (a timeout); this is the cause
	case hs.State != health.StateUp:
		why = append(why, hs.Reason)
	}
	switch ms.Breaker {
	case "open":
		why = append(why, fmt.Sprintf("breaker open after %s until %s", plural(ms.Offenses, "offence"),
			ms.OpenUntil.UTC().Format(time.RFC3339)))
	case "half-open":
		why = append(why, fmt.Sprintf("breaker half-open after %s: trial calls decide", plural(ms.Offenses, "offence")))
	}
	switch {
	case ms.AbandonedCap:
		why = append(why, plural(ds.Abandoned, "abandoned call")+" still running: at the cap")
	case ds.Abandoned > 0:
		why = append(why, plural(ds.Abandoned, "abandoned call")+" still running")
	}
	if n := len(ds.ExcludedKeys); n > 0 {
		why = append(why, plural(n, "key")+" excluded")
	}
	for _, ps := range ds.Partitions {
		switch {
		case ps.Open:
		case ps.Error != "":
			why = append(why, fmt.Sprintf("partition %s not open: %s", ps.Name, ps.Error))
		default:
			why = append(why, fmt.Sprintf("partition %s not open", ps.Name))
		}
	}
	if len(why) == 0 {
		return hs.Reason
	}
	return strings.Join(why, "; ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// Ready reports whether every partition has at least one up device that holds all its keys.
func (cl *Cluster) Ready() bool {
	st := cl.Status()
	for pi, cp := range cl.parts {
		cp.mu.RLock()
		labels := make([]string, 0, len(cp.keys))
		for l := range cp.keys {
			labels = append(labels, l)
		}
		cp.mu.RUnlock()
		ok := false
		for i, d := range cl.devices {
			if st[i].State == "down" || !d.be.Partition(pi).Open {
				continue
			}
			all := true
			for _, l := range labels {
				if _, ex := st[i].ExcludedKeys[cp.name+"/"+l]; ex {
					all = false
					break
				}
			}
			if all {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
