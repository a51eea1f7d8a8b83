package main

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// printCheck writes the report a person reads top to bottom: devices, their partitions, keys, the session
// budget, then problems, advice and the verdict.
func printCheck(w io.Writer, r *checkResult) {
	rep := r.Report
	fmt.Fprintf(w, "hsm-ha-proxy check: %s: %d devices, %d partitions, local_region %s\n\n",
		r.Config, len(rep.Devices), len(rep.Partitions), rep.LocalRegion)
	printDevices(w, rep)
	printKeys(w, rep)
	printBudget(w, r.Budget, rep.SessionPoolSize)
	printFindings(w, "Problems", r.Problems)
	printFindings(w, "Advice", r.Advice)
	switch r.ExitCode {
	case 0:
		fmt.Fprintln(w, "Verdict: OK: every device reachable and every key consistent (exit 0)")
	default:
		fmt.Fprintf(w, "Verdict: %d problem(s) (exit %d)\n", len(r.Problems), r.ExitCode)
	}
}

func printDevices(w io.Writer, rep *inspection.Report) {
	fmt.Fprintln(w, "Devices")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  DEVICE\tREGION\tTIER\tSTATE\tPROBE MIN\tMEDIAN\tOPEN TOOK\tMODULE")
	for _, d := range rep.Devices {
		state, lo, med := "reachable", "-", "-"
		if !d.Reachable {
			state = "UNREACHABLE"
		}
		if d.Latency != nil {
			lo, med = sidecarapi.FormatLatency(d.Latency.Min), sidecarapi.FormatLatency(d.Latency.Median)
		}
		tier := fmt.Sprint(d.Tier)
		if d.TierOverride {
			tier += " (set)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Name, d.Region, tier, state, lo, med,
			sidecarapi.FormatLatency(d.OpenTime), filepath.Base(d.Module))
	}
	_ = tw.Flush()
	for _, d := range rep.Devices {
		fmt.Fprintf(w, "\n  %s", d.Name)
		if d.Library != nil {
			fmt.Fprintf(w, ": module %q %s by %q, Cryptoki %s", d.Library.Description, d.Library.Version,
				d.Library.Manufacturer, d.Library.Cryptoki)
		}
		fmt.Fprintln(w)
		if !d.Reachable {
			fmt.Fprintf(w, "    unreachable [%s]: %s\n", d.ErrorClass, d.Error)
			for _, c := range d.Abandoned {
				fmt.Fprintf(w, "    call left running in the module: %s\n", c)
			}
			if !anyToken(d) {
				continue
			}
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "    PARTITION\tTOKEN\tSERIAL\tMANUFACTURER / MODEL\tFIRMWARE\tSESSIONS OPEN/MAX\tLOGIN\tKEYS")
		for _, p := range d.Partitions {
			if p.Token == nil {
				fmt.Fprintf(tw, "    %s\t(no token)\t\t\t\t\t%s\t\n", p.Name, loginText(p))
				continue
			}
			t := p.Token
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s / %s\t%s\t%s\t%s\t%s\n", p.Name, t.Label, t.Serial, t.Manufacturer, t.Model,
				t.Firmware, sessionsText(t), loginText(p), keysText(p))
		}
		_ = tw.Flush()
		for _, p := range d.Partitions {
			if p.Error != "" && d.Reachable {
				fmt.Fprintf(w, "    %s [%s]: %s\n", p.Name, p.ErrorClass, p.Error)
			}
		}
	}
	fmt.Fprintln(w)
}

func anyToken(d inspection.DeviceReport) bool {
	for _, p := range d.Partitions {
		if p.Token != nil {
			return true
		}
	}
	return false
}

// sessionsText is "open/max", with the free count when both are known.
func sessionsText(t *inspection.TokenInfo) string {
	s := countText(t.Sessions) + "/" + countText(t.MaxSessions)
	if t.Sessions.Kind == inspection.SessionsCount && t.MaxSessions.Kind == inspection.SessionsCount && t.MaxSessions.Value >= t.Sessions.Value {
		s += fmt.Sprintf(" (%d free)", t.MaxSessions.Value-t.Sessions.Value)
	}
	return s
}

func loginText(p inspection.DevicePartition) string {
	switch {
	case p.LoggedIn:
		return fmt.Sprintf("ok (%d C_Login)", p.LoginAttempts)
	case p.LoginAttempts > 0:
		return fmt.Sprintf("FAILED (%d C_Login, not retried)", p.LoginAttempts)
	}
	return "not tried"
}

func keysText(p inspection.DevicePartition) string {
	if !p.LoggedIn {
		return "-"
	}
	return fmt.Sprint(p.Keys)
}

// printKeys writes every key with its devices grouped by the public key they hold.
func printKeys(w io.Writer, rep *inspection.Report) {
	fmt.Fprintln(w, "Keys (reference: the public key most devices hold, as Open picks it; fingerprint: SHA-256 of the SubjectPublicKeyInfo DER, or a secret key's check value)")
	for _, p := range rep.Partitions {
		if len(p.Keys) == 0 {
			fmt.Fprintf(w, "  %s: no keys found\n", p.Name)
		}
		for i, k := range slices.Concat(p.Keys, p.SecretKeys) {
			kind := "sha256"
			if i >= len(p.Keys) {
				kind = "kcv" // a secret key's check value (docs/ARCHITECTURE.md, "Secret keys")
			}
			verdict := "consistent"
			if !k.Consistent {
				verdict = "MISMATCH"
			}
			fmt.Fprintf(w, "  %s/%s  %s %d (%s)  %s\n", p.Name, k.Label, k.KeyType, k.Bits, k.Algorithm, verdict)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "    %s %s\t%s\n", kind, k.Fingerprint, strings.Join(devicesWith(k, inspection.KeyMatch), ", "))
			var others []string // other fingerprints in order of appearance
			for _, kd := range k.Devices {
				if kd.Status == inspection.KeyDifferent && !slices.Contains(others, kd.Fingerprint) {
					others = append(others, kd.Fingerprint)
				}
			}
			for _, fp := range others {
				var ds []string
				for _, kd := range k.Devices {
					if kd.Status == inspection.KeyDifferent && kd.Fingerprint == fp {
						ds = append(ds, fmt.Sprintf("%s (%s)", kd.Device, kd.Algorithm))
					}
				}
				fmt.Fprintf(tw, "    %s %s\t%s: DIFFERENT, excluded for this key\n", kind, fp, strings.Join(ds, ", "))
			}
			if ds := devicesWith(k, inspection.KeyMissing); len(ds) > 0 {
				fmt.Fprintf(tw, "    MISSING\t%s\n", strings.Join(ds, ", "))
			}
			if ds := devicesWith(k, inspection.KeyUnchecked); len(ds) > 0 {
				fmt.Fprintf(tw, "    not checked\t%s (partition not open there)\n", strings.Join(ds, ", "))
			}
			_ = tw.Flush()
		}
	}
	fmt.Fprintln(w)
}

func printBudget(w io.Writer, b sessionBudget, pool int) {
	fmt.Fprintf(w, "Session budget: %d replica(s), each opening up to session_pool_size %d + 1 login session per token (less where the token's max is lower)\n",
		b.Replicas, pool)
	if len(b.Tokens) == 0 {
		fmt.Fprintln(w, "  no token answered")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TOKEN\tMAX SESSIONS\tOPEN BY OTHERS\tNEEDED\tFITS\tMAX REPLICAS")
		for _, t := range b.Tokens {
			fits := "yes"
			if !t.Fits {
				fits = "NO"
			}
			fmt.Fprintf(tw, "  %s/%s\t%s\t%s\t%d\t%s\t%s\n", t.Device, t.Partition, countText(t.Max), countText(t.InUse),
				t.Needed, fits, replicasText(t.MaxReplicas))
		}
		_ = tw.Flush()
	}
	fmt.Fprintf(w, "  largest replica count that fits every token: %s\n\n", replicasText(b.MaxReplicas))
}

func printFindings(w io.Writer, title string, fs []finding) {
	fmt.Fprintf(w, "%s (%d)\n", title, len(fs))
	for _, f := range fs {
		fmt.Fprintf(w, "  - %s\n", f.Message)
	}
	fmt.Fprintln(w)
}
