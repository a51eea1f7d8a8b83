package pkcs11ha

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// RenameKey changes the label of partition's key label to newLabel on every device: its private and
// public objects, and its certificate when that bears the old label. Every configured device must be
// reachable: one that kept the old label would hold, to a sync, another key than the rest (under
// key_replication wrap the sync would copy it back under the old label). When a device refuses, the
// devices already changed are changed back and the error, a *ReplicationError, names the refusals.
func (cl *Cluster) RenameKey(ctx context.Context, partition, label, newLabel string) error {
	switch {
	case newLabel == "":
		return errclass.InputErr("key label is required")
	case len(newLabel) > 128:
		return errclass.InputErr("key label has %d bytes, at most 128", len(newLabel))
	case newLabel == label:
		return nil
	}
	ki, pi, targets, err := cl.everyDevice(ctx, partition, label)
	if err != nil {
		return err
	}
	if _, err := cl.labelFree(ctx, pi, targets, newLabel); err != nil {
		return err
	}
	keyID, _ := hex.DecodeString(ki.ID)
	pubDER, err := x509.MarshalPKIXPublicKey(ki.Public)
	if err != nil {
		return err
	}
	rk := &renamedKey{id: keyID, pubDER: pubDER}
	done, refused := onEach(targets, func(d *clusterDevice) error { return cl.relabel(ctx, pi, d, rk, label, newLabel) })
	if len(refused) > 0 {
		err = &ReplicationError{Op: "rename", Partition: partition, Label: label, Done: done, Refused: refused, Need: len(targets), Err: ErrQuorum}
		onEach(targets, func(d *clusterDevice) error { return cl.relabelBack(ctx, pi, d, rk, newLabel, label) })
		done = nil
	}
	cl.audit(ctx, "rename", partition, label, ki.Fingerprint, done, refused, err, "new_label", newLabel)
	return err
}

// renamedKey names the objects of a key being renamed: its CKA_ID and public key.
type renamedKey struct {
	id, pubDER []byte
}

// relabel sets CKA_LABEL to on device d's objects of key rk labelled from: the public object first (a
// listing in between finds no private key under the new label without its public key).
func (cl *Cluster) relabel(ctx context.Context, pi int, d *clusterDevice, rk *renamedKey, from, to string) error {
	for _, class := range []uint{pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
		if err := cl.setLabel(ctx, pi, d, []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, class), devicebackend.AttrString(pkcs11.CKA_LABEL, from),
			devicebackend.AttrBytes(pkcs11.CKA_ID, rk.id)}, to); err != nil {
			return err
		}
	}
	r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Read: certReads,
		Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), devicebackend.AttrString(pkcs11.CKA_LABEL, from)}})
	if err != nil {
		return err
	}
	for _, o := range r.Objects {
		der := devicebackend.Value(o, pkcs11.CKA_VALUE)
		cert, perr := x509.ParseCertificate(der)
		if perr != nil {
			continue
		}
		if spki, merr := x509.MarshalPKIXPublicKey(cert.PublicKey); merr != nil || !bytes.Equal(spki, rk.pubDER) {
			continue // another key's certificate that happens to bear the label
		}
		if err := cl.setLabel(ctx, pi, d, []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), devicebackend.AttrString(pkcs11.CKA_LABEL, from),
			devicebackend.AttrBytes(pkcs11.CKA_VALUE, der)}, to); err != nil {
			return err
		}
	}
	return nil
}

// relabelBack undoes a partial rename on device d: whatever objects of rk bear the new label get the old
// one back (best effort; a failure is in the audit line's refusals already).
func (cl *Cluster) relabelBack(ctx context.Context, pi int, d *clusterDevice, rk *renamedKey, from, to string) error {
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_CERTIFICATE} {
		tmpl := []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, class), devicebackend.AttrString(pkcs11.CKA_LABEL, from)}
		if class != pkcs11.CKO_CERTIFICATE {
			tmpl = append(tmpl, devicebackend.AttrBytes(pkcs11.CKA_ID, rk.id))
		}
		r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Template: tmpl})
		if err != nil || len(r.Objects) != 1 {
			continue
		}
		_ = cl.setLabel(ctx, pi, d, tmpl, to)
	}
	return nil
}

// setLabel sets CKA_LABEL to on the one object of device d that tmpl finds.
func (cl *Cluster) setLabel(ctx context.Context, pi int, d *clusterDevice, tmpl []devicebackend.Attr, to string) error {
	_, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminSetAttributes, Template: tmpl, Set: []devicebackend.Attr{devicebackend.AttrString(pkcs11.CKA_LABEL, to)}})
	return err
}
