package pkcs11ha

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"fmt"
	"sort"
	"sync/atomic"
)

// secretEntry is one secret key (partition, label): the reference key check value and the devices whose
// key matches it.
type secretEntry struct {
	label    string
	id       []byte
	alg      string
	keyType  uint
	size     int
	hash     crypto.Hash
	kcv      []byte
	mask     atomic.Uint64
	excluded atomic.Pointer[map[string]string] // device -> reason
}

// SecretKeyInfo describes a secret key of a partition as the cluster sees it.
type SecretKeyInfo struct {
	Label     string
	ID        string // CKA_ID in hex
	Algorithm string // AES_128, AES_192, AES_256, HMAC_SHA256, HMAC_SHA384 or HMAC_SHA512
	// KeyType is the key's CKA_KEY_TYPE on the devices (CKK_AES, CKK_GENERIC_SECRET, CKK_SHA256_HMAC...)
	// and ValueLen its CKA_VALUE_LEN in bytes.
	KeyType  uint
	ValueLen int
	// CheckValue is the key check value in hex (docs/ARCHITECTURE.md, "Secret keys"): the same on every
	// device holding this key, different for another key under the same label.
	CheckValue string
	Devices    []string          // devices that hold the reference key
	Excluded   map[string]string // device -> why it does not serve this key
}

// checkSecrets is checkKeys for the secret keys of partition pi (cp.mu held): the first devices to report
// a label fix its reference check value by majority; a device without the key or with another check
// value is excluded for it.
func (cl *Cluster) checkSecrets(pi int, cp *clusterPartition) {
	held := make([]map[string]*secretObject, len(cl.devices))
	labels := map[string]bool{}
	for i, d := range cl.devices {
		held[i] = d.be.secretKeys(pi)
		for l := range held[i] {
			labels[l] = true
		}
	}
	for label := range labels {
		e := cp.secrets[label]
		if e == nil {
			votes := make([]*secretObject, 0, len(held))
			for _, keys := range held {
				if keys != nil {
					votes = append(votes, keys[label])
				}
			}
			b := majoritySecret(votes)
			e = &secretEntry{label: label, id: b.id, alg: b.alg, keyType: b.keyType, size: b.size, hash: b.hash, kcv: b.kcv}
			cp.secrets[label] = e
		}
		var mask uint64
		excl := map[string]string{}
		for i, d := range cl.devices {
			switch k := held[i][label]; {
			case held[i] == nil:
				if why := d.be.partition(pi).CredFatal; why != "" {
					excl[d.name] = "partition unusable: " + why
				}
			case k == nil:
				excl[d.name] = "key missing on this device"
			case !sameSecret(k, e.kcv, e.alg):
				excl[d.name] = fmt.Sprintf("different key under the same label (check value %s, want %s)", hex.EncodeToString(k.kcv), hex.EncodeToString(e.kcv))
			default:
				mask |= 1 << uint(d.idx)
			}
		}
		cl.noteExclusions(cp, label, e.excluded.Load(), excl)
		e.mask.Store(mask)
		e.excluded.Store(&excl)
	}
}

func sameSecret(k *secretObject, kcv []byte, alg string) bool {
	return k.alg == alg && bytes.Equal(k.kcv, kcv)
}

// majoritySecret is majorityKey for secret keys: the check value (and algorithm) most devices share, the
// earliest on a tie.
func majoritySecret(held []*secretObject) *secretObject {
	var best *secretObject
	bestN := 0
	for _, k := range held {
		if k == nil {
			continue
		}
		n := 0
		for _, o := range held {
			if o != nil && sameSecret(o, k.kcv, k.alg) {
				n++
			}
		}
		if n > bestN {
			best, bestN = k, n
		}
	}
	return best
}

// SecretKey returns the secret key (AES or HMAC) with the given label in the named partition.
func (cl *Cluster) SecretKey(ctx context.Context, partition, label string) (*SecretKey, error) {
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
		e := cp.secrets[label]
		cp.mu.RUnlock()
		if e == nil {
			return nil, fmt.Errorf("%w: secret key %q in partition %q", ErrUnknownKey, label, partition)
		}
		return &SecretKey{cl: cl, pidx: pi, part: partition, entry: e, hash: e.hash}, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

// SecretKeys lists the secret keys of a partition, sorted by label.
func (cl *Cluster) SecretKeys(partition string) ([]SecretKeyInfo, error) {
	for _, cp := range cl.parts {
		if cp.name != partition {
			continue
		}
		cp.mu.RLock()
		defer cp.mu.RUnlock()
		out := make([]SecretKeyInfo, 0, len(cp.secrets))
		for _, e := range cp.secrets {
			out = append(out, cl.secretInfo(e))
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
		return out, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

func (cl *Cluster) secretInfo(e *secretEntry) SecretKeyInfo {
	si := SecretKeyInfo{Label: e.label, ID: hexID(e.id), Algorithm: e.alg, KeyType: e.keyType, ValueLen: e.size,
		CheckValue: hex.EncodeToString(e.kcv), Excluded: map[string]string{}}
	mask := e.mask.Load()
	for _, d := range cl.devices {
		if mask&(1<<uint(d.idx)) != 0 {
			si.Devices = append(si.Devices, d.name)
		}
	}
	if ex := e.excluded.Load(); ex != nil {
		for k, v := range *ex {
			si.Excluded[k] = v
		}
	}
	return si
}
