package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// finding is one problem or one piece of advice of `check`. Code is stable (see docs/operations.md, "Preflight").
type finding struct {
	Code      string `json:"code"`
	Device    string `json:"device,omitempty"`
	Partition string `json:"partition,omitempty"`
	Key       string `json:"key,omitempty"`
	Message   string `json:"message"`
}

// Problem codes: any of them makes `check` exit 1.
const (
	codeUnreachable    = "device_unreachable"
	codeLoginFailed    = "login_failed"
	codePartitionError = "partition_error"
	codeKeyDifferent   = "key_different"
	codeKeyMissing     = "key_missing"
	codeBudgetExceeded = "session_budget_exceeded"
)

// Advice codes: printed, but `check` still exits 0.
const (
	adviceLocalPair       = "local_pair_incomplete"
	adviceNoDR            = "no_dr"
	adviceDRSingle        = "dr_single_device"
	adviceDRFaster        = "dr_faster_than_local"
	advicePartitionAbsent = "partition_not_on_every_device"
	adviceRemoteTier0     = "remote_device_in_tier0"
	adviceLocalNotTier0   = "local_device_not_in_tier0"
	adviceSameToken       = "same_token_on_two_devices"
	adviceNoKeys          = "partition_without_keys"
	adviceLimitUnknown    = "session_limit_unknown"
)

// drFasterFactor: a DR device counts as faster than a local one only when its median probe latency is
// less than this fraction of the local one's, so that noise between devices at the same distance says
// nothing.
const drFasterFactor = 0.5

// problems lists what makes the estate unfit to serve as configured: unreachable devices, failed logins,
// keys that differ or are missing (as Open decides), and session budgets exceeded.
func problems(rep *inspection.Report, b sessionBudget) []finding {
	out := []finding{}
	for _, d := range rep.Devices {
		if !d.Reachable {
			msg := fmt.Sprintf("%s is unreachable: %s", d.Name, d.Error)
			if len(d.Abandoned) > 0 {
				msg += fmt.Sprintf(" (call left running in the module: %s)", strings.Join(d.Abandoned, ", "))
			}
			out = append(out, finding{Code: codeUnreachable, Device: d.Name, Message: msg})
			continue
		}
		for _, p := range d.Partitions {
			switch {
			case !p.TokenFound || p.LoggedIn:
			case p.ErrorClass == "credential":
				out = append(out, finding{Code: codeLoginFailed, Device: d.Name, Partition: p.Name,
					Message: fmt.Sprintf("login to partition %s on %s failed after %d attempt(s), not retried: %s",
						p.Name, d.Name, p.LoginAttempts, p.Error)})
			default:
				out = append(out, finding{Code: codePartitionError, Device: d.Name, Partition: p.Name,
					Message: fmt.Sprintf("partition %s on %s did not open: %s", p.Name, d.Name, p.Error)})
			}
		}
	}
	for _, p := range rep.Partitions {
		for i, k := range slices.Concat(p.Keys, p.SecretKeys) {
			fp := fingerprintName(i >= len(p.Keys))
			holders := devicesWith(k, inspection.KeyMatch)
			for _, kd := range k.Devices {
				name := p.Name + "/" + k.Label
				switch kd.Status {
				case inspection.KeyDifferent:
					out = append(out, finding{Code: codeKeyDifferent, Device: kd.Device, Partition: p.Name, Key: k.Label,
						Message: fmt.Sprintf("%s on %s is a different key (%s %s, %s) from the one %s hold (%s %s, %s): Open excludes %s for this key",
							name, kd.Device, fp, short(kd.Fingerprint), kd.Algorithm, strings.Join(holders, ", "), fp, short(k.Fingerprint), k.Algorithm, kd.Device)})
				case inspection.KeyMissing:
					out = append(out, finding{Code: codeKeyMissing, Device: kd.Device, Partition: p.Name, Key: k.Label,
						Message: fmt.Sprintf("%s is missing on %s (held by %s): Open excludes %s for this key",
							name, kd.Device, strings.Join(holders, ", "), kd.Device)})
				}
			}
		}
	}
	for _, t := range b.Tokens {
		if !t.Fits {
			out = append(out, finding{Code: codeBudgetExceeded, Device: t.Device, Partition: t.Partition,
				Message: fmt.Sprintf("%d replica(s) need up to %d sessions on %s's %s token, which allows %s with %s already open by others; at most %s replica(s) fit",
					b.Replicas, t.Needed, t.Device, t.Partition, countText(t.Max), countText(t.InUse), replicasText(t.MaxReplicas))})
		}
	}
	return out
}

// advice compares the estate with the deployment guidance the project follows: an HA pair per region, a
// DR pair in a second region, the HSMs nearest the applications in the local tier.
func advice(rep *inspection.Report, b sessionBudget) []finding {
	out := []finding{}
	add := func(code, format string, args ...any) *finding {
		out = append(out, finding{Code: code, Message: fmt.Sprintf(format, args...)})
		return &out[len(out)-1]
	}
	var local, localUp, dr []inspection.DeviceReport
	drRegions := map[string][]string{}
	var regionOrder []string
	for _, d := range rep.Devices {
		if d.Local {
			local = append(local, d)
			if d.Reachable {
				localUp = append(localUp, d)
			}
			continue
		}
		dr = append(dr, d)
		if _, ok := drRegions[d.Region]; !ok {
			regionOrder = append(regionOrder, d.Region)
		}
		drRegions[d.Region] = append(drRegions[d.Region], d.Name)
	}
	switch {
	case len(local) < 2:
		add(adviceLocalPair, "only %d device is configured in local_region %s (%s): the guidance is an HA pair per region; when it fails, every call goes to DR",
			len(local), rep.LocalRegion, names(local))
	case len(localUp) < 2:
		add(adviceLocalPair, "only %d of the %d devices in local_region %s is reachable (%s): the guidance is an HA pair per region; as it stands, one more failure sends every call to DR",
			len(localUp), len(local), rep.LocalRegion, names(localUp))
	}
	if len(dr) == 0 {
		add(adviceNoDR, "every device is in local_region %s: there is no DR, so losing that region stops every signature; the guidance is a DR pair in a second region",
			rep.LocalRegion)
	}
	for _, r := range regionOrder {
		if len(drRegions[r]) == 1 {
			add(adviceDRSingle, "DR region %s has a single device (%s): the guidance is a pair there too", r, drRegions[r][0]).Device = drRegions[r][0]
		}
	}
	for _, d := range dr {
		for _, l := range localUp {
			if d.Reachable && d.Latency != nil && l.Latency != nil && float64(d.Latency.Median) < drFasterFactor*float64(l.Latency.Median) {
				add(adviceDRFaster, "%s (region %s, tier %d) answered faster (median %s) than %s in local_region %s (median %s): is local_region right? The local tier should be the HSMs nearest the applications",
					d.Name, d.Region, d.Tier, sidecarapi.FormatLatency(d.Latency.Median), l.Name, rep.LocalRegion, sidecarapi.FormatLatency(l.Latency.Median)).Device = d.Name
				break
			}
		}
	}
	for _, d := range rep.Devices {
		switch {
		case d.TierOverride && d.Tier == 0 && !d.Local:
			add(adviceRemoteTier0, "%s is in region %s, not local_region %s, but tier: 0 puts it in the local tier: it takes local traffic at its distance, and DR no longer waits for the local pair to fail",
				d.Name, d.Region, rep.LocalRegion).Device = d.Name
		case d.TierOverride && d.Tier > 0 && d.Local:
			add(adviceLocalNotTier0, "%s is in local_region %s but tier: %d keeps it out of the local tier", d.Name, rep.LocalRegion, d.Tier).Device = d.Name
		}
	}
	out = append(out, partitionAdvice(rep)...)
	for _, t := range b.Tokens {
		if t.Max.Kind == inspection.SessionsUnknown {
			f := add(adviceLimitUnknown, "%s's %s token does not report its max session count: the session budget cannot be checked there", t.Device, t.Partition)
			f.Device, f.Partition = t.Device, t.Partition
		}
	}
	return out
}

// partitionAdvice: partitions missing from a reachable device, the same token behind two devices, and
// partitions without keys.
func partitionAdvice(rep *inspection.Report) []finding {
	var out []finding
	for pi, p := range rep.Partitions {
		seen := map[string]string{} // token serial -> device
		for _, d := range rep.Devices {
			if pi >= len(d.Partitions) || !d.Reachable {
				continue
			}
			dp := d.Partitions[pi]
			if !dp.TokenFound {
				out = append(out, finding{Code: advicePartitionAbsent, Device: d.Name, Partition: p.Name,
					Message: fmt.Sprintf("partition %s has no token on %s: that device cannot serve it, so %s has less redundancy than the others",
						p.Name, d.Name, p.Name)})
				continue
			}
			if dp.Token == nil || strings.TrimSpace(dp.Token.Serial) == "" {
				continue
			}
			if other, dup := seen[dp.Token.Serial]; dup {
				out = append(out, finding{Code: adviceSameToken, Device: d.Name, Partition: p.Name,
					Message: fmt.Sprintf("%s and %s report the same token serial %s for partition %s: they may be one HSM configured twice, which is no redundancy",
						other, d.Name, dp.Token.Serial, p.Name)})
				continue
			}
			seen[dp.Token.Serial] = d.Name
		}
		opened := false
		for _, d := range rep.Devices {
			opened = opened || (pi < len(d.Partitions) && d.Partitions[pi].LoggedIn)
		}
		if opened && len(p.Keys) == 0 {
			out = append(out, finding{Code: adviceNoKeys, Partition: p.Name,
				Message: fmt.Sprintf("partition %s holds no labelled private key on any device", p.Name)})
		}
	}
	return out
}

func devicesWith(k inspection.KeyReport, status string) []string {
	var out []string
	for _, kd := range k.Devices {
		if kd.Status == status {
			out = append(out, kd.Device)
		}
	}
	return out
}

func names(ds []inspection.DeviceReport) string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Name)
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// short abbreviates a hex fingerprint for a sentence; the key table and --json have it whole.
func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "..."
	}
	return fp
}

// fingerprintName names what KeyReport.Fingerprint holds: the SHA-256 of a public key, or a secret key's
// check value.
func fingerprintName(secret bool) string {
	if secret {
		return "check value"
	}
	return "sha256"
}
