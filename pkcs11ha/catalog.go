package pkcs11ha

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
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
	label    string
	id       []byte
	alg      string
	pub      any
	pubDER   []byte
	mask     atomic.Uint64                     // devices that hold exactly this key
	excluded atomic.Pointer[map[string]string] // device -> reason
	cert     atomic.Pointer[[]byte]            // the key's certificate (certs.go); nil: none
	// certLogged is what was logged about the key's certificates (pickCertificate), under Cluster.keysMu.
	certLogged map[string]bool
}

// checkKeys rebuilds the key catalogue after a device (re)opened: the first devices to report a label fix
// its reference public key (majorityKey); a device that lacks the key or holds a different one is excluded
// for that key.
func (cl *Cluster) checkKeys() {
	cl.keysMu.Lock()
	defer cl.keysMu.Unlock()
	for pi, cp := range cl.parts {
		held := cl.keysHeld(pi)
		labels := map[string]bool{}
		for _, keys := range held {
			for label := range keys {
				labels[label] = true
			}
		}
		cp.mu.Lock()
		for label := range labels { // a label no open device holds keeps its devices until one reports
			e := cp.keys[label]
			if e == nil {
				votes := make([]*keyObject, 0, len(held))
				for _, keys := range held {
					if keys != nil { // in config order: it breaks ties
						votes = append(votes, keys[label])
					}
				}
				best := majorityKey(votes)
				e = &keyEntry{label: label, id: best.id, alg: best.alg, pub: best.pub, pubDER: best.pubDER}
				cp.keys[label] = e
			}
			cl.assignKey(pi, cp, e, held)
			cl.pickCertificate(cp, e, held)
		}
		cl.checkSecrets(pi, cp)
		cp.mu.Unlock()
	}
}

// keysHeld returns, for each device (by index), a snapshot of its keys of partition pi by label; nil for a
// device where the partition is not open.
func (cl *Cluster) keysHeld(pi int) []map[string]*keyObject {
	held := make([]map[string]*keyObject, len(cl.devices))
	for i, d := range cl.devices {
		held[i] = d.be.keys(pi)
	}
	return held
}

// majorityKey returns the key whose public key most of held share, the earliest in held on a tie (config
// order breaks ties); nil entries are devices without the label. It is nil only if every entry is.
func majorityKey(held []*keyObject) *keyObject {
	var best *keyObject
	bestN := 0
	for _, k := range held {
		if k == nil {
			continue
		}
		n := 0
		for _, o := range held {
			if o != nil && bytes.Equal(o.pubDER, k.pubDER) {
				n++
			}
		}
		if n > bestN {
			best, bestN = k, n
		}
	}
	return best
}

// assignKey sets which devices serve key e of partition cp (index pi), from the snapshot held: those holding the reference public
// key; every other one is excluded, with the reason, logged and counted once per new exclusion.
func (cl *Cluster) assignKey(pi int, cp *clusterPartition, e *keyEntry, held []map[string]*keyObject) {
	var mask uint64
	excl := map[string]string{}
	for i, d := range cl.devices {
		keys := held[i]
		if keys == nil {
			if why := d.be.partition(pi).CredFatal; why != "" {
				excl[d.name] = "partition unusable: " + why
			}
			continue
		}
		k := keys[e.label]
		switch {
		case k == nil:
			excl[d.name] = "key missing on this device"
		case !bytes.Equal(k.pubDER, e.pubDER):
			excl[d.name] = "different public key under the same label"
		default:
			mask |= 1 << uint(d.idx)
		}
	}
	cl.noteExclusions(cp, e.label, e.excluded.Load(), excl)
	e.mask.Store(mask)
	e.excluded.Store(&excl)
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
	if cl.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for pi, cp := range cl.parts {
		if cp.name != partition {
			continue
		}
		cp.mu.RLock()
		e := cp.keys[label]
		cp.mu.RUnlock()
		if e == nil {
			return nil, fmt.Errorf("%w: %q in partition %q", ErrUnknownKey, label, partition)
		}
		return &Key{cl: cl, pidx: pi, part: partition, entry: e}, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

// Keys lists the keys of a partition, sorted by label.
func (cl *Cluster) Keys(partition string) ([]KeyInfo, error) {
	for _, cp := range cl.parts {
		if cp.name != partition {
			continue
		}
		cp.mu.RLock()
		defer cp.mu.RUnlock()
		out := make([]KeyInfo, 0, len(cp.keys))
		for _, e := range cp.keys {
			out = append(out, cl.keyInfo(e))
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
		return out, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

func (cl *Cluster) keyInfo(e *keyEntry) KeyInfo {
	ki := KeyInfo{Label: e.label, ID: hexID(e.id), Algorithm: e.alg, Public: e.pub, Excluded: map[string]string{}}
	if c := e.cert.Load(); c != nil {
		ki.Certificate = *c
	}
	mask := e.mask.Load()
	for _, d := range cl.devices {
		if mask&(1<<uint(d.idx)) != 0 {
			ki.Devices = append(ki.Devices, d.name)
		}
	}
	if ex := e.excluded.Load(); ex != nil {
		for k, v := range *ex {
			ki.Excluded[k] = v
		}
	}
	return ki
}

// Info returns the KeyInfo of this key.
func (k *Key) Info() KeyInfo { return k.cl.keyInfo(k.entry) }
