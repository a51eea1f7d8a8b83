package pkcs11ha

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// Bringing every device of a partition up to date (docs/ARCHITECTURE.md, "Key management"): tombstones
// everywhere, tombstoned keys nowhere, duplicates removed, and a key one device lacks copied to it
// (key_replication wrap). A label whose key differs between devices is drift: reported, never changed.
// Everything is read from the devices at the start of each sync; nothing is remembered between syncs.

// SyncAction is one change a sync makes (or, dry, would make) on one device.
type SyncAction struct {
	Action      string `json:"action"` // "tombstone", "destroy", "dedupe" or "copy"
	Device      string `json:"device"`
	Label       string `json:"label"`
	Fingerprint string `json:"fingerprint"`
	From        string `json:"from,omitempty"` // copy: the device the key is wrapped on
	Why         string `json:"why"`
	Error       string `json:"error,omitempty"` // the action failed
}

// Drift is a label held with different keys by different devices.
type Drift struct {
	Label        string            `json:"label"`
	Fingerprints map[string]string `json:"fingerprints"` // device -> fingerprint
}

// SyncReport is what one sync of a partition found and did.
type SyncReport struct {
	Partition   string            `json:"partition"`
	DryRun      bool              `json:"dry_run"`
	Actions     []SyncAction      `json:"actions"`
	Missing     []SyncAction      `json:"missing"`     // copies that cannot be made, and why
	Drift       []Drift           `json:"drift"`       // never changed by a sync
	Unreachable map[string]string `json:"unreachable"` // devices not read (down, timed out), and why
}

// Clean reports whether the partition is the same everywhere the sync could see: no drift, no copy
// missing, no action failed.
func (r *SyncReport) Clean() bool {
	if len(r.Drift) > 0 || len(r.Missing) > 0 {
		return false
	}
	for _, a := range r.Actions {
		if a.Error != "" {
			return false
		}
	}
	return true
}

// SyncKeys brings every reachable device of partition up to date (dryRun: only says what it would do).
// The error is for the call itself (unknown partition, closed cluster); what the sync could not do is in
// the report (Clean).
func (cl *Cluster) SyncKeys(ctx context.Context, partition string, dryRun bool) (*SyncReport, error) {
	if cl.closed.Load() {
		return nil, ErrClosed
	}
	pi, err := cl.partIndex(partition)
	if err != nil {
		return nil, err
	}
	rep := &SyncReport{Partition: partition, DryRun: dryRun, Actions: []SyncAction{}, Missing: []SyncAction{}, Drift: []Drift{},
		Unreachable: map[string]string{}}
	in, out := cl.adminTargets(pi)
	for _, d := range out {
		rep.Unreachable[d.name] = "device down or partition not open"
	}
	var hs []*devHolding
	for _, h := range cl.readHoldings(ctx, pi, in) {
		if h.err != nil {
			rep.Unreachable[h.dev.name] = h.err.Error()
		} else {
			hs = append(hs, h)
		}
	}
	cl.planSync(pi, hs, rep)
	if !dryRun {
		cl.applySync(ctx, pi, hs, rep)
	}
	return rep, nil
}

// planSync fills rep with what hs need.
func (cl *Cluster) planSync(pi int, hs []*devHolding, rep *SyncReport) {
	tombs := map[string]string{} // fingerprint -> label, on any device
	where := map[string]string{} // fingerprint -> a device holding its tombstone
	for _, h := range hs {
		for fp, label := range h.tombs {
			tombs[fp], where[fp] = label, h.dev.name
		}
	}
	for _, h := range hs {
		for _, fp := range slices.Sorted(maps.Keys(tombs)) {
			if _, ok := h.tombs[fp]; !ok {
				rep.Actions = append(rep.Actions, SyncAction{Action: "tombstone", Device: h.dev.name, Label: tombs[fp], Fingerprint: fp,
					Why: "destroyed (tombstone on " + where[fp] + ")"})
			}
		}
		for _, k := range h.keys {
			switch {
			case where[k.fp] != "":
				rep.Actions = append(rep.Actions, SyncAction{Action: "destroy", Device: h.dev.name, Label: k.label, Fingerprint: k.fp,
					Why: "destroyed (tombstone on " + where[k.fp] + ")"})
			case k.copies > 1:
				rep.Actions = append(rep.Actions, SyncAction{Action: "dedupe", Device: h.dev.name, Label: k.label, Fingerprint: k.fp,
					Why: fmt.Sprintf("%d identical copies", k.copies)})
			}
		}
	}
	// Live keys by label: one fingerprint everywhere is copied where missing; several are drift.
	byLabel := map[string]map[string]string{} // label -> device -> fingerprint
	for _, h := range hs {
		for _, k := range h.keys {
			if where[k.fp] != "" {
				continue
			}
			if byLabel[k.label] == nil {
				byLabel[k.label] = map[string]string{}
			}
			byLabel[k.label][h.dev.name] = k.fp
		}
	}
	for _, label := range slices.Sorted(maps.Keys(byLabel)) {
		devs := byLabel[label]
		fps := map[string]bool{}
		for _, fp := range devs {
			fps[fp] = true
		}
		if len(fps) > 1 {
			rep.Drift = append(rep.Drift, Drift{Label: label, Fingerprints: devs})
			continue
		}
		for _, h := range hs {
			if _, ok := devs[h.dev.name]; !ok {
				rep.plan(cl.planCopy(pi, hs, h, label, devs))
			}
		}
	}
}

// plan files a copy as an action, or as missing when it cannot be made.
func (r *SyncReport) plan(a SyncAction, ok bool) {
	if ok {
		r.Actions = append(r.Actions, a)
	} else {
		r.Missing = append(r.Missing, a)
	}
}

// planCopy plans copying label (held by devs) to dst: from a device whose copy may be wrapped under a
// trusted key that dst holds too (key_replication wrap), else it reports why it cannot.
func (cl *Cluster) planCopy(pi int, hs []*devHolding, dst *devHolding, label string, devs map[string]string) (SyncAction, bool) {
	var fp string
	for _, f := range devs {
		fp = f
	}
	a := SyncAction{Action: "copy", Device: dst.dev.name, Label: label, Fingerprint: fp, Why: "missing on this device"}
	switch r := cl.s.cfg.Partitions[pi].replication(); r {
	case ReplicationImport, ReplicationVendor:
		a.Why = "missing on this device; key_replication " + r + " cannot copy it (import it again, or let the vendor replicate)"
		return a, false
	}
	for _, src := range hs {
		k := src.key(label, fp)
		if k == nil || !k.wrapTrusted || !k.extractable {
			continue
		}
		if commonKEK(src.keks, dst.keks) != "" {
			a.From = src.dev.name
			return a, true
		}
	}
	a.Why = "missing on this device; no copy elsewhere is wrappable under a trusted key this device also holds (keys init-kek)"
	return a, false
}

// applySync makes rep's actions, in order: tombstones, destructions, deduplications, copies; each one's
// failure is recorded on it and logged as an audit line.
func (cl *Cluster) applySync(ctx context.Context, pi int, hs []*devHolding, rep *SyncReport) {
	byName := map[string]*devHolding{}
	for _, h := range hs {
		byName[h.dev.name] = h
	}
	for i := range rep.Actions {
		a := &rep.Actions[i]
		h := byName[a.Device]
		var err error
		switch a.Action {
		case "tombstone":
			err = cl.tombstone(ctx, pi, h.dev, a.Label, a.Fingerprint)
		case "destroy":
			err = cl.destroyPair(ctx, pi, h.dev, a.Label, h.key(a.Label, a.Fingerprint).id)
		case "dedupe":
			err = cl.dedupe(ctx, pi, h.dev, h.key(a.Label, a.Fingerprint))
		case "copy":
			err = cl.copyKey(ctx, pi, byName[a.From], h, a.Label, a.Fingerprint)
		}
		if err != nil {
			a.Error = err.Error()
		}
		refused := map[string]string{}
		if err != nil {
			refused[a.Device] = a.Error
		}
		cl.audit(ctx, "sync_"+a.Action, rep.Partition, a.Label, a.Fingerprint, []string{a.Device}, refused, err, "why", a.Why)
	}
}

// dedupe keeps one of a device's identical copies of k.
func (cl *Cluster) dedupe(ctx context.Context, pi int, d *clusterDevice, k *devKey) error {
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminDestroy, Keep: 1, Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, class),
			devicebackend.AttrString(pkcs11.CKA_LABEL, k.label), devicebackend.AttrBytes(pkcs11.CKA_ID, k.id)}}); err != nil {
			return err
		}
	}
	return nil
}

// copyKey copies the key (label, fp) from src to dst under a key-encryption key both hold.
func (cl *Cluster) copyKey(ctx context.Context, pi int, src, dst *devHolding, label, fp string) error {
	k := src.key(label, fp)
	kek := commonKEK(src.keks, dst.keks)
	blob, err := cl.wrapOut(ctx, pi, src.dev, kek, label, k.id)
	if err != nil {
		return fmt.Errorf("wrapping on %s: %w", src.dev.name, err)
	}
	defer clear(blob)
	_, kt := algOf(k.pub)
	return cl.wrapIn(ctx, pi, dst.dev, kek, blob, &madeKey{label: label, id: k.id, keyType: kt, pub: k.pub, pubDER: k.pubDER, fp: fp})
}

// settleRace applies the concurrency rule (docs/keys.md) after m was created everywhere: when another
// live key holds the same label, the lower fingerprint wins; the loser withdraws its own key. A winner
// waits for the loser to withdraw, and withdraws itself if the other key stays (its maker did not see
// the race and already reported success), so that one key is left either way.
func (cl *Cluster) settleRace(ctx context.Context, pi int, targets []*clusterDevice, m *madeKey) error {
	deadline := time.Now().Add(min(cl.s.own.AdminTimeout, raceGrace))
	for {
		rivals := map[string]bool{}
		for _, h := range cl.readHoldings(ctx, pi, targets) {
			if h.err != nil {
				continue
			}
			for _, k := range h.keys {
				if k.label == m.label && k.fp != m.fp {
					if _, dead := h.tombs[k.fp]; !dead {
						rivals[k.fp] = true
					}
				}
			}
		}
		if len(rivals) == 0 {
			return nil
		}
		lowest := slices.Min(slices.Collect(maps.Keys(rivals)))
		if lowest < m.fp || time.Now().After(deadline) {
			cl.withdraw(ctx, pi, targets, m.label, m.id, m.fp)
			return fmt.Errorf("%w: %q in partition %q: another key with this label was created at the same time (fingerprint %s) and won",
				ErrKeyExists, m.label, cl.parts[pi].name, short(lowest))
		}
		if waitOrDone(ctx, 200*time.Millisecond) != nil {
			return ctx.Err()
		}
	}
}

// raceGrace bounds how long the winner of a race waits for the loser to withdraw.
const raceGrace = 10 * time.Second

// short is a fingerprint's first 16 hex digits, for messages.
func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

// waitOrDone waits d, or until ctx ends (its error).
func waitOrDone(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rescan lists partition pi's keys again on every reachable device (the catalogue follows), each bounded
// by ctx.
func (cl *Cluster) rescan(ctx context.Context, pi int) {
	in, _ := cl.adminTargets(pi)
	onEach(in, func(d *clusterDevice) error {
		_, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminRescan})
		return err
	})
}

// rescanUnknown is the live pickup of Cluster.Key: a label the catalogue does not know makes the
// partition's keys be listed again, at most once per unknownRescanEvery, for at most unknownRescanWait;
// it reports whether it rescanned.
func (cl *Cluster) rescanUnknown(ctx context.Context, pi int) bool {
	ks := &cl.keySync
	ks.mu.Lock()
	if ks.lastRescan == nil {
		ks.lastRescan = map[int]time.Time{}
	}
	if time.Since(ks.lastRescan[pi]) < unknownRescanEvery {
		ks.mu.Unlock()
		return false
	}
	ks.lastRescan[pi] = time.Now()
	ks.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, unknownRescanWait)
	defer cancel()
	cl.rescan(ctx, pi)
	return true
}

const (
	unknownRescanEvery = time.Second
	unknownRescanWait  = 2 * time.Second
)

// keySyncState is the background sync's state (Cluster.keySync).
type keySyncState struct {
	trigger    chan struct{}
	stop       chan struct{}
	done       chan struct{}
	mu         sync.Mutex
	lastRescan map[int]time.Time // partition -> last live-pickup rescan
	reported   map[string]string // "partition/label" -> the drift last logged
	// tombs are the fingerprints of destroyed keys, per partition, as last read from the devices (or
	// written by this cluster): a device that still holds one (it was down) never serves it.
	tombs map[int]map[string]bool
}

// noteTombs records tombstoned fingerprints of partition pi; it reports whether any was new.
func (cl *Cluster) noteTombs(pi int, fps ...string) bool {
	ks := &cl.keySync
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.tombs == nil {
		ks.tombs = map[int]map[string]bool{}
	}
	if ks.tombs[pi] == nil {
		ks.tombs[pi] = map[string]bool{}
	}
	added := false
	for _, fp := range fps {
		if !ks.tombs[pi][fp] {
			ks.tombs[pi][fp], added = true, true
		}
	}
	return added
}

// liveKeys is keys without those destroyed elsewhere (tombstoned).
func (cl *Cluster) liveKeys(pi int, keys map[string]*devicebackend.KeyObject) map[string]*devicebackend.KeyObject {
	ks := &cl.keySync
	ks.mu.Lock()
	dead := ks.tombs[pi]
	ks.mu.Unlock()
	if keys == nil || len(dead) == 0 {
		return keys
	}
	out := make(map[string]*devicebackend.KeyObject, len(keys))
	for l, k := range keys {
		if !dead[Fingerprint(k.PubDER)] {
			out[l] = k
		}
	}
	return out
}

// startKeySync starts the background sync (policy.key_sync_interval; negative: none).
func (cl *Cluster) startKeySync() {
	if cl.s.own.KeySyncInterval <= 0 {
		return
	}
	ks := &cl.keySync
	ks.trigger, ks.stop, ks.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ks.done)
		t := time.NewTicker(cl.s.own.KeySyncInterval)
		defer t.Stop()
		for {
			select {
			case <-ks.stop:
				return
			case <-t.C:
			case <-ks.trigger:
			}
			cl.syncRound(ks.stop)
		}
	}()
}

// triggerKeySync asks for a sync round now (a device came back).
func (cl *Cluster) triggerKeySync() {
	if ks := &cl.keySync; ks.trigger != nil {
		select {
		case ks.trigger <- struct{}{}:
		default:
		}
	}
}

// stopKeySync stops the background sync and waits for its round in progress.
func (cl *Cluster) stopKeySync() {
	if ks := &cl.keySync; ks.stop != nil {
		close(ks.stop)
		<-ks.done
	}
}

// syncRound rescans and syncs every partition once, stopping early when stop closes.
func (cl *Cluster) syncRound(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(WithActor(context.Background(), "background sync"))
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for pi, p := range cl.s.cfg.Partitions {
		cl.rescan(ctx, pi)
		rep, err := cl.SyncKeys(ctx, p.Name, false)
		if err != nil || ctx.Err() != nil {
			return
		}
		cl.logDrift(rep)
	}
}

// logDrift warns about each drifting label once per change.
func (cl *Cluster) logDrift(rep *SyncReport) {
	ks := &cl.keySync
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.reported == nil {
		ks.reported = map[string]string{}
	}
	for _, d := range rep.Drift {
		var b strings.Builder
		for _, dev := range slices.Sorted(maps.Keys(d.Fingerprints)) {
			fmt.Fprintf(&b, "%s=%s ", dev, short(d.Fingerprints[dev]))
		}
		key := rep.Partition + "/" + d.Label
		if ks.reported[key] != b.String() {
			ks.reported[key] = b.String()
			cl.log.Warn("key drift: devices hold different keys under one label; not changed", "partition", rep.Partition,
				"key", d.Label, "fingerprints", strings.TrimSpace(b.String()))
		}
	}
	for _, m := range rep.Missing {
		key := rep.Partition + "/" + m.Label + "@" + m.Device
		if ks.reported[key] != m.Why {
			ks.reported[key] = m.Why
			cl.log.Warn("key missing on a device; sync cannot copy it", "partition", rep.Partition, "key", m.Label, "device", m.Device, "why", m.Why)
		}
	}
}

// loadTombstones reads every open partition's tombstones from every device that opened, before the
// cluster serves (Open): a device that was away when a key was destroyed never serves that key, not even
// before the first sync removes it there.
func (cl *Cluster) loadTombstones(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, cl.s.own.InitTimeout)
	defer cancel()
	for pi := range cl.s.cfg.Partitions {
		var ds []*clusterDevice
		for _, d := range cl.devices {
			if d.be.Partition(pi).Open {
				ds = append(ds, d)
			}
		}
		var mu sync.Mutex
		var fps []string
		onEach(ds, func(d *clusterDevice) error {
			r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Read: []uint{pkcs11.CKA_VALUE},
				Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), devicebackend.AttrString(pkcs11.CKA_APPLICATION, tombstoneApp)}})
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			for _, o := range r.Objects {
				fps = append(fps, string(devicebackend.Value(o, pkcs11.CKA_VALUE)))
			}
			return nil
		})
		cl.noteTombs(pi, fps...)
	}
}
