package pkcs11ha

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// clusterPartition is the key catalogue of one partition across devices.
type clusterPartition struct {
	name    string
	mu      sync.RWMutex
	keys    map[string]*keyEntry
	secrets map[string]*secretEntry // secret keys (secretcatalog.go)
}

// keyEntry is one (partition, label): the reference public key and the devices that hold it.
type keyEntry struct {
	label  string
	id     []byte
	alg    string
	pub    any
	pubDER []byte
	servedBy
	cert atomic.Pointer[[]byte] // the key's certificate (certs.go); nil: none
	// certLogged is what was logged about the key's certificates (pickCertificate), under Cluster.keysMu.
	certLogged map[string]bool
}

// servedBy is which devices serve one catalogue entry (a key pair, or a secret key) and why the others
// do not.
type servedBy struct {
	mask     atomic.Uint64                     // devices that hold exactly the reference key
	excluded atomic.Pointer[map[string]string] // device -> reason
}

// checkKeys rebuilds the key catalogue after a device (re)opened: the first devices to report a label fix
// its reference public key (majority); a device that lacks the key or holds a different one is excluded
// for that key.
func (cl *Cluster) checkKeys() {
	cl.keysMu.Lock()
	defer cl.keysMu.Unlock()
	for pi, cp := range cl.parts {
		held := cl.keysHeld(pi)
		labels := labelsIn(held)
		cp.mu.Lock()
		for label, e := range cp.keys {
			if !labels[label] && anyOpen(held) {
				// Destroyed everywhere that reports (docs/ARCHITECTURE.md, "Key management"): handles on it fail
				// with ErrNoDevice, and the label is free for a new key.
				e.mask.Store(0)
				delete(cp.keys, label)
			}
		}
		for label := range labels {
			e := cp.keys[label]
			if e != nil && !holdsKey(held, label, e.pubDER) {
				e.mask.Store(0)
				e = nil // its reference key is gone (destroyed, or rotated under the same label): vote again
			}
			if e == nil {
				best := majority(votes(held, label), samePublicKey)
				e = &keyEntry{label: label, id: best.ID, alg: best.Alg, pub: best.Pub, pubDER: best.PubDER}
				cp.keys[label] = e
			}
			assign(cl, pi, cp, &e.servedBy, label, held, func(k *devicebackend.KeyObject) string {
				if !bytes.Equal(k.PubDER, e.pubDER) {
					return "different public key under the same label"
				}
				return ""
			})
			cl.pickCertificate(cp, e, held)
		}
		cl.checkSecrets(pi, cp)
		cp.mu.Unlock()
	}
}

// keysHeld returns, for each device (by index), a snapshot of its keys of partition pi by label; nil for a
// device where the partition is not open.
func (cl *Cluster) keysHeld(pi int) []map[string]*devicebackend.KeyObject {
	held := make([]map[string]*devicebackend.KeyObject, len(cl.devices))
	for i, d := range cl.devices {
		held[i] = cl.liveKeys(pi, d.be.Keys(pi))
	}
	return held
}

// labelsIn returns the labels some device of held holds.
func labelsIn[T any](held []map[string]*T) map[string]bool {
	labels := map[string]bool{}
	for _, objs := range held {
		for l := range objs {
			labels[l] = true
		}
	}
	return labels
}

// votes returns what each device whose partition is open holds under label (nil: not that label), in
// config order: it breaks majority's ties.
func votes[T any](held []map[string]*T, label string) []*T {
	out := make([]*T, 0, len(held))
	for _, objs := range held {
		if objs != nil {
			out = append(out, objs[label])
		}
	}
	return out
}

// majority returns the entry of held that most entries are the same key as (same), the earliest in held
// on a tie (config order breaks ties); nil entries are devices without the label. It is nil only if every
// entry is. The catalogue votes with it for key pairs (samePublicKey) and secret keys (sameSecret).
func majority[T any](held []*T, same func(a, b *T) bool) *T {
	var best *T
	bestN := 0
	for _, k := range held {
		if k == nil {
			continue
		}
		n := 0
		for _, o := range held {
			if o != nil && same(o, k) {
				n++
			}
		}
		if n > bestN {
			best, bestN = k, n
		}
	}
	return best
}

// samePublicKey reports whether two key pairs are the same key: the same public key.
func samePublicKey(a, b *devicebackend.KeyObject) bool { return bytes.Equal(a.PubDER, b.PubDER) }

// assign sets which devices serve entry s (label in partition cp, index pi), from the snapshot held: those
// whose object under label is the reference key (differs returns ""); every other one is excluded, with
// the reason, logged and counted once per new exclusion.
func assign[T any](cl *Cluster, pi int, cp *clusterPartition, s *servedBy, label string, held []map[string]*T, differs func(*T) string) {
	var mask uint64
	excl := map[string]string{}
	for i, d := range cl.devices {
		objs := held[i]
		if objs == nil {
			if why := d.be.Partition(pi).CredFatal; why != "" {
				excl[d.name] = "partition unusable: " + why
			}
			continue
		}
		k := objs[label]
		if k == nil {
			excl[d.name] = "key missing on this device"
		} else if why := differs(k); why != "" {
			excl[d.name] = why
		} else {
			mask |= 1 << uint(d.idx)
		}
	}
	cl.noteExclusions(cp, label, s.excluded.Load(), excl)
	s.mask.Store(mask)
	s.excluded.Store(&excl)
}

// devices returns the names of the devices serving the entry, in config order.
func (s *servedBy) devices(cl *Cluster) []string {
	var out []string
	mask := s.mask.Load()
	for _, d := range cl.devices {
		if mask&(1<<uint(d.idx)) != 0 {
			out = append(out, d.name)
		}
	}
	return out
}

// exclusions returns a copy of the entry's excluded devices and why.
func (s *servedBy) exclusions() map[string]string {
	out := map[string]string{}
	if ex := s.excluded.Load(); ex != nil {
		maps.Copy(out, *ex)
	}
	return out
}

// noteExclusions logs and counts the exclusions of excl that old (the key's previous ones) lacked.
func (cl *Cluster) noteExclusions(cp *clusterPartition, label string, old *map[string]string, excl map[string]string) {
	if old != nil && len(*old) >= len(excl) {
		return
	}
	for dn, why := range excl {
		if old == nil || (*old)[dn] != why {
			cl.metrics.keyInconsistent.WithLabelValues(dn, cp.name, label).Inc()
			cl.log.Warn("device excluded for key", "device", dn, "partition", cp.name, "key", label, "reason", why)
		}
	}
}

// Key returns the key with the given label in the named partition.
func (cl *Cluster) Key(ctx context.Context, partition, label string) (*Key, error) {
	pi, cp, err := cl.lookupStart(ctx, partition)
	if err != nil {
		return nil, err
	}
	cp.mu.RLock()
	e := cp.keys[label]
	cp.mu.RUnlock()
	if e == nil && cl.rescanUnknown(ctx, pi) { // live pickup: a key made elsewhere since (keysync.go)
		cp.mu.RLock()
		e = cp.keys[label]
		cp.mu.RUnlock()
	}
	if e == nil {
		return nil, fmt.Errorf("%w: %q in partition %q", ErrUnknownKey, label, partition)
	}
	return &Key{cl: cl, pidx: pi, part: partition, entry: e}, nil
}

// lookupStart is the start of Key and SecretKey: the cluster open, ctx live, and the partition's index and
// catalogue.
func (cl *Cluster) lookupStart(ctx context.Context, partition string) (int, *clusterPartition, error) {
	if cl.closed.Load() {
		return 0, nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	pi, err := cl.partIndex(partition)
	if err != nil {
		return 0, nil, err
	}
	return pi, cl.parts[pi], nil
}

// Keys lists the keys of a partition, sorted by label.
func (cl *Cluster) Keys(partition string) ([]KeyInfo, error) {
	return listEntries(cl, partition, func(cp *clusterPartition) map[string]*keyEntry { return cp.keys }, cl.keyInfo)
}

// listEntries lists the entries of a partition's catalogue (entries picks the key pairs or the secret
// keys) as info describes them, sorted by label.
func listEntries[E, I any](cl *Cluster, partition string, entries func(*clusterPartition) map[string]*E, info func(*E) I) ([]I, error) {
	pi, err := cl.partIndex(partition)
	if err != nil {
		return nil, err
	}
	cp := cl.parts[pi]
	cp.mu.RLock()
	defer cp.mu.RUnlock()
	labels := slices.Sorted(maps.Keys(entries(cp)))
	out := make([]I, 0, len(labels))
	for _, l := range labels {
		out = append(out, info(entries(cp)[l]))
	}
	return out, nil
}

func (cl *Cluster) keyInfo(e *keyEntry) KeyInfo {
	ki := KeyInfo{Label: e.label, ID: hexID(e.id), Algorithm: e.alg, Public: e.pub, Devices: e.devices(cl), Excluded: e.exclusions(), Fingerprint: Fingerprint(e.pubDER)}
	if c := e.cert.Load(); c != nil {
		ki.Certificate = *c
	}
	return ki
}

// Info returns the KeyInfo of this key.
func (k *Key) Info() KeyInfo { return k.cl.keyInfo(k.entry) }

// anyOpen reports whether some device's partition is open in held.
func anyOpen(held []map[string]*devicebackend.KeyObject) bool {
	for _, keys := range held {
		if keys != nil {
			return true
		}
	}
	return false
}

// holdsKey reports whether some device of held holds label with the public key pubDER.
func holdsKey(held []map[string]*devicebackend.KeyObject, label string, pubDER []byte) bool {
	for _, keys := range held {
		if k := keys[label]; k != nil && bytes.Equal(k.PubDER, pubDER) {
			return true
		}
	}
	return false
}
