package pkcs11ha

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// key_replication wrap (docs/keys.md): a key is generated inside one device, sensitive and extractable
// only under a trusted key (CKA_WRAP_WITH_TRUSTED), wrapped there under the partition's trusted AES
// key-encryption key with CKM_AES_KEY_WRAP_PAD and unwrapped on every other device: its material never
// leaves an HSM in clear.

// wrapMech is the mechanism keys travel under between devices.
const wrapMech = pkcs11.CKM_AES_KEY_WRAP_PAD

// keks reads the CKA_IDs (hex) of the trusted key-encryption keys of partition pi on device d.
func (cl *Cluster) keks(ctx context.Context, pi int, d *clusterDevice) (map[string]bool, error) {
	r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind,
		Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, kekLabel)},
		Read:     []uint{pkcs11.CKA_ID, pkcs11.CKA_TRUSTED}})
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, o := range r.Objects {
		if devicebackend.BoolOf(devicebackend.Value(o, pkcs11.CKA_TRUSTED)) {
			out[hex.EncodeToString(devicebackend.Value(o, pkcs11.CKA_ID))] = true
		}
	}
	return out, nil
}

// commonKEK returns a key-encryption key both a and b hold (the lowest ID, so that every replica picks
// the same one), or "".
func commonKEK(a, b map[string]bool) string {
	var both []string
	for id := range a {
		if b[id] {
			both = append(both, id)
		}
	}
	sort.Strings(both)
	if len(both) == 0 {
		return ""
	}
	return both[0]
}

// generateWrap generates spec's key in the first of targets and copies it to the others. Every target
// must share a trusted key-encryption key with the first, which is checked before anything is made.
func (cl *Cluster) generateWrap(ctx context.Context, pi int, targets []*clusterDevice, spec *KeySpec) (*madeKey, error) {
	kekOf := make([]map[string]bool, len(targets))
	_, refused := onEach(targets, func(d *clusterDevice) error {
		ks, err := cl.keks(ctx, pi, d)
		kekOf[slices.Index(targets, d)] = ks
		return err
	})
	src := targets[0]
	for i, d := range targets {
		if _, bad := refused[d.name]; !bad && commonKEK(kekOf[0], kekOf[i]) == "" {
			refused[d.name] = fmt.Sprintf("no trusted key-encryption key shared with %s (run hsm-ha-proxy keys init-kek)", src.name)
		}
	}
	if len(refused) > 0 {
		return nil, &ReplicationError{Op: "generate", Partition: cl.parts[pi].name, Label: spec.Label, Refused: refused,
			Need: len(targets), Err: ErrNoKEK}
	}
	m, err := cl.generateOn(ctx, pi, src, spec, true)
	if err != nil {
		return m, err
	}
	blob := map[string][]byte{} // per KEK: the key wrapped under it
	for i := range targets[1:] {
		kek := commonKEK(kekOf[0], kekOf[i+1])
		if blob[kek] == nil {
			if blob[kek], err = cl.wrapOut(ctx, pi, src, kek, m.label, m.id); err != nil {
				return m, err
			}
		}
	}
	done, why := onEach(targets[1:], func(d *clusterDevice) error {
		kek := commonKEK(kekOf[0], kekOf[slices.Index(targets, d)])
		return cl.wrapIn(ctx, pi, d, kek, blob[kek], m)
	})
	m.done = append(m.done, done...)
	sort.Strings(m.done)
	for d, e := range why {
		m.refused[d] = e
	}
	return m, nil
}

// kekTemplate finds the key-encryption key with CKA_ID kekID (hex).
func kekTemplate(kekID string) []devicebackend.Attr {
	id, _ := hex.DecodeString(kekID)
	return []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, kekLabel), devicebackend.AttrBytes(pkcs11.CKA_ID, id)}
}

// wrapOut wraps the private key (label, id) of device d under its key-encryption key kekID.
func (cl *Cluster) wrapOut(ctx context.Context, pi int, d *clusterDevice, kekID, label string, id []byte) ([]byte, error) {
	r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminWrap, Mech: wrapMech, Key: kekTemplate(kekID),
		Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, label), devicebackend.AttrBytes(pkcs11.CKA_ID, id)}})
	if err != nil {
		return nil, err
	}
	return r.Data, nil
}

// wrapIn unwraps blob on device d under its key-encryption key kekID as m's private key (with the
// attributes every replica has), and creates m's public key beside it.
func (cl *Cluster) wrapIn(ctx context.Context, pi int, d *clusterDevice, kekID string, blob []byte, m *madeKey) error {
	pubT, err := publicAttrs(m.label, m.id, m.pub)
	if err != nil {
		return err
	}
	// The public object first, as importOn does.
	if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminCreate, Template: pubT}); err != nil {
		return err
	}
	_, err = cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminUnwrap, Mech: wrapMech, Key: kekTemplate(kekID), Data: blob,
		Template: privateAttrs(m.label, m.id, m.keyType, true)})
	return err
}
