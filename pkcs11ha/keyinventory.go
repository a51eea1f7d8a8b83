package pkcs11ha

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// What each device holds of a partition, read from the device itself (docs/ARCHITECTURE.md, "Key
// management": the HSMs are the only state): its key pairs, its tombstones and its key-encryption keys.

// Object conventions of the cluster on every token.
const (
	// tombstoneApp is the CKA_APPLICATION of a tombstone: a CKO_DATA object whose CKA_LABEL is the
	// destroyed key's label and CKA_VALUE its public-key fingerprint (hex).
	tombstoneApp = "pkcs11-ha tombstone"
	// kekLabel is the CKA_LABEL of a partition's key-encryption key (one per ceremony, told apart by CKA_ID).
	kekLabel = "pkcs11-ha kek"
)

// devKey is one key pair as one device holds it.
type devKey struct {
	label  string
	id     []byte
	alg    string
	pub    crypto.PublicKey
	pubDER []byte
	fp     string
	// The private object's flags that decide how it may be used and copied.
	sign, decrypt, extractable, sensitive, wrapTrusted bool
	copies                                             int // private objects with this label and public key (more than one: duplicates)
}

// devHolding is what one device holds of a partition; err says why it could not be read.
type devHolding struct {
	dev   *clusterDevice
	err   error
	keys  []*devKey
	tombs map[string]string // fingerprint -> label
	keks  map[string]bool   // CKA_ID (hex) of the trusted key-encryption keys
}

// key returns the device's key pair with label and fingerprint fp ("" any), or nil.
func (h *devHolding) key(label, fp string) *devKey {
	for _, k := range h.keys {
		if k.label == label && (fp == "" || k.fp == fp) {
			return k
		}
	}
	return nil
}

var privReads = []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT,
	pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_WRAP_WITH_TRUSTED, pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT}

// readHolding reads partition pi on device d: four searches, each an admin call under ctx.
func (cl *Cluster) readHolding(ctx context.Context, pi int, d *clusterDevice) *devHolding {
	h := &devHolding{dev: d, tombs: map[string]string{}, keks: map[string]bool{}}
	find := func(tmpl []devicebackend.Attr, read []uint) [][]devicebackend.Attr {
		if h.err != nil {
			return nil
		}
		r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Template: tmpl, Read: read})
		if err != nil {
			h.err = err
			return nil
		}
		return r.Objects
	}
	privs := find([]devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}, privReads)
	pubs := find([]devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}, pubReads)
	tombs := find([]devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), devicebackend.AttrString(pkcs11.CKA_APPLICATION, tombstoneApp)},
		[]uint{pkcs11.CKA_LABEL, pkcs11.CKA_VALUE})
	keks := find([]devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, kekLabel)},
		[]uint{pkcs11.CKA_ID, pkcs11.CKA_TRUSTED})
	if h.err != nil {
		return h
	}
	for _, t := range tombs {
		h.tombs[string(devicebackend.Value(t, pkcs11.CKA_VALUE))] = string(devicebackend.Value(t, pkcs11.CKA_LABEL))
	}
	for _, k := range keks {
		if devicebackend.BoolOf(devicebackend.Value(k, pkcs11.CKA_TRUSTED)) {
			h.keks[hex.EncodeToString(devicebackend.Value(k, pkcs11.CKA_ID))] = true
		}
	}
	for _, p := range privs {
		k := pairKey(p, pubs)
		if k == nil {
			continue // unlabelled, or no public key to be found: not a key the cluster can serve
		}
		if old := h.key(k.label, k.fp); old != nil {
			old.copies++
			continue
		}
		h.keys = append(h.keys, k)
	}
	sort.Slice(h.keys, func(i, j int) bool { return h.keys[i].label < h.keys[j].label })
	return h
}

// pairKey makes the devKey of private object p, with its public key from p itself (RSA) or from the
// public object with the same CKA_ID (else label).
func pairKey(p []devicebackend.Attr, pubs [][]devicebackend.Attr) *devKey {
	label, id := string(devicebackend.Value(p, pkcs11.CKA_LABEL)), devicebackend.Value(p, pkcs11.CKA_ID)
	if label == "" {
		return nil
	}
	src := p
	if devicebackend.UlongOf(devicebackend.Value(p, pkcs11.CKA_KEY_TYPE)) != pkcs11.CKK_RSA || devicebackend.Value(p, pkcs11.CKA_MODULUS) == nil {
		src = nil
		for _, q := range pubs {
			if (len(id) > 0 && bytes.Equal(devicebackend.Value(q, pkcs11.CKA_ID), id)) || (len(id) == 0 && string(devicebackend.Value(q, pkcs11.CKA_LABEL)) == label) {
				src = q
				break
			}
		}
		if src == nil {
			return nil
		}
	}
	pub, der, alg, err := publicFromAttrs(src)
	if err != nil {
		return nil
	}
	return &devKey{label: label, id: id, alg: alg, pub: pub, pubDER: der, fp: Fingerprint(der), copies: 1,
		sign: devicebackend.BoolOf(devicebackend.Value(p, pkcs11.CKA_SIGN)), decrypt: devicebackend.BoolOf(devicebackend.Value(p, pkcs11.CKA_DECRYPT)),
		extractable: devicebackend.BoolOf(devicebackend.Value(p, pkcs11.CKA_EXTRACTABLE)), sensitive: devicebackend.BoolOf(devicebackend.Value(p, pkcs11.CKA_SENSITIVE)),
		wrapTrusted: devicebackend.BoolOf(devicebackend.Value(p, pkcs11.CKA_WRAP_WITH_TRUSTED))}
}

// adminOn runs op on device d's partition pi under ctx, bounded by policy.admin_timeout.
func (cl *Cluster) adminOn(ctx context.Context, d *clusterDevice, pi int, op *devicebackend.AdminOp) (*devicebackend.AdminResult, error) {
	ctx, cancel := context.WithTimeout(ctx, cl.s.own.AdminTimeout)
	defer cancel()
	r, err := d.be.Admin(ctx, pi, op)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", d.name, err)
	}
	return r, nil
}

// adminTargets are the devices an admin operation on partition pi addresses: those whose health monitor
// does not say down and whose partition is open. The others are caught up by the background sync.
func (cl *Cluster) adminTargets(pi int) (in, out []*clusterDevice) {
	for i, d := range cl.devices {
		up := i < len(cl.monitors) && cl.monitors[i].Status().State != health.StateDown
		if up && d.be.Partition(pi).Open {
			in = append(in, d)
		} else {
			out = append(out, d)
		}
	}
	return in, out
}

// readHoldings reads partition pi on every device of ds at once.
func (cl *Cluster) readHoldings(ctx context.Context, pi int, ds []*clusterDevice) []*devHolding {
	out := make([]*devHolding, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() { out[i] = cl.readHolding(ctx, pi, d) })
	}
	wg.Wait()
	var fps []string
	for _, h := range out {
		for fp := range h.tombs {
			fps = append(fps, fp)
		}
	}
	if cl.noteTombs(pi, fps...) {
		cl.checkKeys() // a device that was away may hold a key destroyed meanwhile: it must not serve it
	}
	return out
}

// partIndex returns the index of the named partition.
func (cl *Cluster) partIndex(partition string) (int, error) { return cl.s.cfg.partIndex(partition) }

// partIndex returns the index of the named partition in c.Partitions.
func (c *Config) partIndex(partition string) (int, error) {
	for pi, p := range c.Partitions {
		if p.Name == partition {
			return pi, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrUnknownPartition, partition)
}

// Inventory is what every device holds of one partition, read from each device (not from the
// catalogue): the view of `hsm-ha-proxy keys list`.
type Inventory struct {
	Partition   string            `json:"partition"`
	Replication string            `json:"key_replication"`
	MinReplicas int               `json:"min_key_replicas"`
	Devices     []DeviceInventory `json:"devices"` // in config order
}

// DeviceInventory is one device's part of an Inventory.
type DeviceInventory struct {
	Device     string    `json:"device"`
	Error      string    `json:"error,omitempty"` // why the device was not read (down, partition closed, timeout)
	Keys       []KeyCopy `json:"keys"`
	Tombstones int       `json:"tombstones"`
	KEKs       int       `json:"keks"` // trusted key-encryption keys (key_replication wrap)
}

// KeyCopy is one key pair on one device.
type KeyCopy struct {
	Label           string `json:"label"`
	ID              string `json:"id"` // hex
	Algorithm       string `json:"algorithm"`
	Fingerprint     string `json:"fingerprint"` // hex SHA-256 of the SubjectPublicKeyInfo
	Sign            bool   `json:"sign"`
	Decrypt         bool   `json:"decrypt"`
	Extractable     bool   `json:"extractable"`
	Sensitive       bool   `json:"sensitive"`
	WrapWithTrusted bool   `json:"wrap_with_trusted"`
	Copies          int    `json:"copies"` // objects with this label and key; more than 1 are duplicates
}

// Inventory reads partition from every device that is not down (each bounded by policy.admin_timeout).
func (cl *Cluster) Inventory(ctx context.Context, partition string) (*Inventory, error) {
	if cl.closed.Load() {
		return nil, ErrClosed
	}
	pi, err := cl.partIndex(partition)
	if err != nil {
		return nil, err
	}
	pc := &cl.s.cfg.Partitions[pi]
	inv := &Inventory{Partition: partition, Replication: pc.replication(), MinReplicas: pc.minReplicas(len(cl.devices))}
	in, _ := cl.adminTargets(pi)
	hs := cl.readHoldings(ctx, pi, in)
	byDev := map[*clusterDevice]*devHolding{}
	for _, h := range hs {
		byDev[h.dev] = h
	}
	for _, d := range cl.devices {
		di := DeviceInventory{Device: d.name, Keys: []KeyCopy{}}
		h := byDev[d]
		switch {
		case h == nil:
			di.Error = "device down or partition not open"
		case h.err != nil:
			di.Error = h.err.Error()
		default:
			di.Tombstones, di.KEKs = len(h.tombs), len(h.keks)
			for _, k := range h.keys {
				di.Keys = append(di.Keys, KeyCopy{Label: k.label, ID: hex.EncodeToString(k.id), Algorithm: k.alg, Fingerprint: k.fp,
					Sign: k.sign, Decrypt: k.decrypt, Extractable: k.extractable, Sensitive: k.sensitive,
					WrapWithTrusted: k.wrapTrusted, Copies: k.copies})
			}
		}
		inv.Devices = append(inv.Devices, di)
	}
	return inv, nil
}
