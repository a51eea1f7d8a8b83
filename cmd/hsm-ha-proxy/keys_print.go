package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// The text forms of `keys list` and `keys sync`.

// printInventory prints key × device: each key's fingerprint (first 16 hex digits) and flags on each
// device, "-" where a device lacks it, and a device that could not be read with its error.
func printInventory(w io.Writer, inv *pkcs11ha.Inventory) {
	fmt.Fprintf(w, "partition %s (key_replication %s, min_key_replicas %d)\n", inv.Partition, inv.Replication, inv.MinReplicas)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "KEY\tALGORITHM\tID")
	for _, d := range inv.Devices {
		fmt.Fprintf(tw, "\t%s", d.Device)
	}
	fmt.Fprintln(tw)
	for _, label := range inventoryLabels(inv) {
		alg, id := "", ""
		cells := make([]string, len(inv.Devices))
		for i, d := range inv.Devices {
			switch k := findCopy(d, label); {
			case d.Error != "":
				cells[i] = "?"
			case k == nil:
				cells[i] = "-"
			default:
				alg, id = k.Algorithm, k.ID
				cells[i] = short16(k.Fingerprint) + " " + copyFlags(k)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", label, alg, id, strings.Join(cells, "\t"))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "flags: S sign, D decrypt, s sensitive, x extractable, t wrap-with-trusted, N×: N duplicate objects")
	for _, d := range inv.Devices {
		if d.Error != "" {
			fmt.Fprintf(w, "%s: not read: %s\n", d.Device, d.Error)
		} else {
			fmt.Fprintf(w, "%s: %d tombstone(s), %d trusted key-encryption key(s)\n", d.Device, d.Tombstones, d.KEKs)
		}
	}
	if inventoryDrift(inv) {
		fmt.Fprintln(w, "DRIFT: some key is not the same on every device read (keys sync --dry-run says what sync would do)")
	}
}

func copyFlags(k *pkcs11ha.KeyCopy) string {
	var b strings.Builder
	for _, f := range []struct {
		on bool
		c  byte
	}{{k.Sign, 'S'}, {k.Decrypt, 'D'}, {k.Sensitive, 's'}, {k.Extractable, 'x'}, {k.WrapWithTrusted, 't'}} {
		if f.on {
			b.WriteByte(f.c)
		}
	}
	if k.Copies > 1 {
		fmt.Fprintf(&b, " %d×", k.Copies)
	}
	return b.String()
}

func inventoryLabels(inv *pkcs11ha.Inventory) []string {
	seen := map[string]bool{}
	for _, d := range inv.Devices {
		for _, k := range d.Keys {
			seen[k.Label] = true
		}
	}
	out := make([]string, 0, len(seen))
	for l := range seen {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

func findCopy(d pkcs11ha.DeviceInventory, label string) *pkcs11ha.KeyCopy {
	for i := range d.Keys {
		if d.Keys[i].Label == label {
			return &d.Keys[i]
		}
	}
	return nil
}

// inventoryDrift reports whether some key is missing on, or different between, the devices read.
func inventoryDrift(inv *pkcs11ha.Inventory) bool {
	for _, label := range inventoryLabels(inv) {
		fps := map[string]bool{}
		for _, d := range inv.Devices {
			if d.Error != "" {
				continue
			}
			k := findCopy(d, label)
			if k == nil {
				return true
			}
			fps[k.Fingerprint] = true
		}
		if len(fps) > 1 {
			return true
		}
	}
	return false
}

// printSync prints what a sync did (or would do), what it cannot do, and the drift it leaves alone.
func printSync(w io.Writer, rep *pkcs11ha.SyncReport) {
	verb := "done"
	if rep.DryRun {
		verb = "would do"
	}
	fmt.Fprintf(w, "partition %s: %d action(s) %s\n", rep.Partition, len(rep.Actions), verb)
	for _, a := range rep.Actions {
		line := fmt.Sprintf("  %s %s on %s (%s): %s", a.Action, a.Label, a.Device, short16(a.Fingerprint), a.Why)
		if a.From != "" {
			line += ", from " + a.From
		}
		if a.Error != "" {
			line += " — FAILED: " + a.Error
		}
		fmt.Fprintln(w, line)
	}
	for _, m := range rep.Missing {
		fmt.Fprintf(w, "  cannot copy %s to %s: %s\n", m.Label, m.Device, m.Why)
	}
	for _, d := range rep.Drift {
		fmt.Fprintf(w, "  DRIFT %s: different keys on different devices, left alone:", d.Label)
		devs := make([]string, 0, len(d.Fingerprints))
		for dev := range d.Fingerprints {
			devs = append(devs, dev)
		}
		sort.Strings(devs)
		for _, dev := range devs {
			fmt.Fprintf(w, " %s=%s", dev, short16(d.Fingerprints[dev]))
		}
		fmt.Fprintln(w)
	}
	for dev, why := range rep.Unreachable {
		fmt.Fprintf(w, "  %s not read: %s\n", dev, why)
	}
}

func short16(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}
