package pkcs11ha

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"fmt"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// secretEntry is one secret key (partition, label): the reference key check value and the devices whose
// key matches it.
type secretEntry struct {
	label   string
	id      []byte
	alg     string
	keyType uint
	size    int
	hash    crypto.Hash
	kcv     []byte
	servedBy
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
	held := make([]map[string]*devicebackend.SecretObject, len(cl.devices))
	for i, d := range cl.devices {
		held[i] = d.be.SecretKeys(pi)
	}
	for label := range labelsIn(held) {
		e := cp.secrets[label]
		if e == nil {
			b := majority(votes(held, label), sameSecret)
			e = &secretEntry{label: label, id: b.ID, alg: b.Alg, keyType: b.KeyType, size: b.Size, hash: b.Hash, kcv: b.KCV}
			cp.secrets[label] = e
		}
		assign(cl, pi, cp, &e.servedBy, label, held, func(k *devicebackend.SecretObject) string {
			if k.Alg != e.alg || !bytes.Equal(k.KCV, e.kcv) {
				return fmt.Sprintf("different key under the same label (check value %s, want %s)", hex.EncodeToString(k.KCV), hex.EncodeToString(e.kcv))
			}
			return ""
		})
	}
}

// sameSecret reports whether two secret keys are the same key: the same algorithm and check value.
func sameSecret(a, b *devicebackend.SecretObject) bool {
	return a.Alg == b.Alg && bytes.Equal(a.KCV, b.KCV)
}

// SecretKey returns the secret key (AES or HMAC) with the given label in the named partition.
func (cl *Cluster) SecretKey(ctx context.Context, partition, label string) (*SecretKey, error) {
	pi, cp, err := cl.lookupStart(ctx, partition)
	if err != nil {
		return nil, err
	}
	cp.mu.RLock()
	e := cp.secrets[label]
	cp.mu.RUnlock()
	if e == nil {
		return nil, fmt.Errorf("%w: secret key %q in partition %q", ErrUnknownKey, label, partition)
	}
	return &SecretKey{cl: cl, pidx: pi, part: partition, entry: e, hash: e.hash}, nil
}

// SecretKeys lists the secret keys of a partition, sorted by label.
func (cl *Cluster) SecretKeys(partition string) ([]SecretKeyInfo, error) {
	return listEntries(cl, partition, func(cp *clusterPartition) map[string]*secretEntry { return cp.secrets }, cl.secretInfo)
}

func (cl *Cluster) secretInfo(e *secretEntry) SecretKeyInfo {
	return SecretKeyInfo{Label: e.label, ID: hexID(e.id), Algorithm: e.alg, KeyType: e.keyType, ValueLen: e.size,
		CheckValue: hex.EncodeToString(e.kcv), Devices: e.devices(cl), Excluded: e.exclusions()}
}

// Algorithm names of secret keys (SecretKeyInfo.Algorithm); the device backend names a key's algorithm
// when it lists the token.
const (
	AlgAES128     = devicebackend.AlgAES128     // "AES_128"
	AlgAES192     = devicebackend.AlgAES192     // "AES_192"
	AlgAES256     = devicebackend.AlgAES256     // "AES_256"
	AlgHMACSHA256 = devicebackend.AlgHMACSHA256 // "HMAC_SHA256"
	AlgHMACSHA384 = devicebackend.AlgHMACSHA384 // "HMAC_SHA384"
	AlgHMACSHA512 = devicebackend.AlgHMACSHA512 // "HMAC_SHA512"
)
