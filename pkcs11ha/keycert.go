package pkcs11ha

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// Certificates of the cluster's keys, written to and removed from every device of a partition (docs/keys.md,
// "Through the PKCS#11 front end"). A key has at most one certificate: the X.509 certificate object with
// its CKA_ID (or label) and its public key (certs.go), which the cluster presents beside it.

// certReads are the attributes read from a device's certificate objects.
var certReads = []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID, pkcs11.CKA_VALUE}

// PutCertificate stores the X.509 certificate der beside the key of partition whose public key it
// certifies, on every reachable device, as a CKO_CERTIFICATE token object labelled label with CKA_ID id
// (by default the key's label and ID; one of them must be the key's, or the certificate would not be the
// key's). A certificate a device held for the key already is replaced: a key has one certificate. It
// succeeds as GenerateKey does (every reachable device, at least min_key_replicas); a failure withdraws
// nothing, since the certificate is public and writing it again is harmless. It returns the key's label.
func (cl *Cluster) PutCertificate(ctx context.Context, partition, label string, id, der []byte) (string, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", errclass.InputErr("certificate: not X.509 DER that Go parses: %v", err)
	}
	ki, err := cl.keyOfCertificate(partition, cert)
	if err != nil {
		return "", err
	}
	keyID, _ := hex.DecodeString(ki.ID)
	if label == "" {
		label = ki.Label
	}
	if id == nil {
		id = keyID
	}
	if label != ki.Label && !bytes.Equal(id, keyID) {
		return "", errclass.InputErr("certificate: neither its label %q nor its CKA_ID %x is key %q's: it would not be the key's certificate", label, id, ki.Label)
	}
	tmpl, err := certTemplate(cert, label, id)
	if err != nil {
		return "", err
	}
	pi, pc, targets, err := cl.adminStart(partition)
	if err != nil {
		return "", err
	}
	done, refused := onEach(targets, func(d *clusterDevice) error {
		old, have, err := cl.certsOfKey(ctx, pi, d, ki, keyID, der)
		if err != nil {
			return err
		}
		if !have {
			if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminCreate, Template: tmpl}); err != nil {
				return err
			}
		}
		return cl.destroyCerts(ctx, pi, d, old) // the new one first: the key is never without one
	})
	need := max(pc.minReplicas(len(cl.devices)), len(targets)-(len(refused)-blocking(refused)))
	if blocking(refused) > 0 || len(done) < need {
		err = &ReplicationError{Op: "certificate", Partition: partition, Label: ki.Label, Done: done, Refused: refused, Need: need, Err: ErrQuorum}
	}
	cl.audit(ctx, "certificate", partition, ki.Label, ki.Fingerprint, done, refused, err, "certificate", certFingerprint(der))
	return ki.Label, err
}

// DestroyCertificate removes the certificate of partition's key label from every device. A device that
// was away would bring it back (devices without one do not vote, certs.go), so every configured device
// must be reachable; it fails (ErrQuorum) otherwise, or when a device refuses, naming it.
func (cl *Cluster) DestroyCertificate(ctx context.Context, partition, label string) error {
	ki, pi, targets, err := cl.everyDevice(ctx, partition, label)
	if err != nil {
		return err
	}
	keyID, _ := hex.DecodeString(ki.ID)
	done, refused := onEach(targets, func(d *clusterDevice) error {
		old, _, err := cl.certsOfKey(ctx, pi, d, ki, keyID, nil)
		if err != nil {
			return err
		}
		return cl.destroyCerts(ctx, pi, d, old)
	})
	if len(refused) > 0 {
		err = &ReplicationError{Op: "destroy certificate", Partition: partition, Label: label, Done: done, Refused: refused, Need: len(targets), Err: ErrQuorum}
	}
	cl.audit(ctx, "destroy_certificate", partition, label, ki.Fingerprint, done, refused, err)
	return err
}

// everyDevice resolves the key label of partition for an operation that must reach every configured
// device (DestroyCertificate, RenameKey): a device left out would undo it when it returns.
func (cl *Cluster) everyDevice(ctx context.Context, partition, label string) (KeyInfo, int, []*clusterDevice, error) {
	pi, _, targets, err := cl.adminStart(partition)
	if err != nil {
		return KeyInfo{}, 0, nil, err
	}
	if len(targets) < len(cl.devices) {
		var out []string
		_, down := cl.adminTargets(pi)
		for _, d := range down {
			out = append(out, d.name)
		}
		return KeyInfo{}, 0, nil, fmt.Errorf("%w: changing key %q in partition %q needs every device reachable (down: %s)",
			ErrQuorum, label, partition, strings.Join(out, ", "))
	}
	ki, err := cl.keyInfoOf(ctx, partition, label)
	return ki, pi, targets, err
}

// keyInfoOf is the catalogue's entry for label (after a live pickup when it is unknown).
func (cl *Cluster) keyInfoOf(ctx context.Context, partition, label string) (KeyInfo, error) {
	if _, err := cl.Key(ctx, partition, label); err != nil {
		return KeyInfo{}, err
	}
	keys, err := cl.Keys(partition)
	if err != nil {
		return KeyInfo{}, err
	}
	for _, ki := range keys {
		if ki.Label == label {
			return ki, nil
		}
	}
	return KeyInfo{}, fmt.Errorf("%w: %q in partition %q", ErrUnknownKey, label, partition)
}

// keyOfCertificate is the key of partition whose public key cert certifies.
func (cl *Cluster) keyOfCertificate(partition string, cert *x509.Certificate) (KeyInfo, error) {
	spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		return KeyInfo{}, errclass.InputErr("certificate: public key: %v", err)
	}
	keys, err := cl.Keys(partition)
	if err != nil {
		return KeyInfo{}, err
	}
	fp := Fingerprint(spki)
	for _, ki := range keys {
		if ki.Fingerprint == fp {
			return ki, nil
		}
	}
	return KeyInfo{}, fmt.Errorf("%w: no key of partition %q has the public key of certificate %q", ErrUnknownKey, partition, cert.Subject.String())
}

// certsOfKey reads device d's certificates of key ki (its CKA_ID or label, its public key): the values
// other than keep, and whether keep is among them.
func (cl *Cluster) certsOfKey(ctx context.Context, pi int, d *clusterDevice, ki KeyInfo, keyID, keep []byte) (others [][]byte, have bool, err error) {
	r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Read: certReads,
		Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), devicebackend.AttrUlong(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509)}})
	if err != nil {
		return nil, false, err
	}
	k := &devicebackend.KeyObject{Label: ki.Label, ID: keyID}
	if k.PubDER, err = x509.MarshalPKIXPublicKey(ki.Public); err != nil {
		return nil, false, err
	}
	for _, o := range r.Objects {
		co := devicebackend.CertObject{Label: string(devicebackend.Value(o, pkcs11.CKA_LABEL)), Id: devicebackend.Value(o, pkcs11.CKA_ID), Der: devicebackend.Value(o, pkcs11.CKA_VALUE)}
		switch der, _ := devicebackend.CertificateFor(k, []devicebackend.CertObject{co}); {
		case der == nil:
		case bytes.Equal(der, keep):
			have = true
		default:
			others = append(others, der)
		}
	}
	return others, have, nil
}

// destroyCerts destroys device d's certificate objects whose value is one of ders.
func (cl *Cluster) destroyCerts(ctx context.Context, pi int, d *clusterDevice, ders [][]byte) error {
	for _, der := range ders {
		if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminDestroy, Template: []devicebackend.Attr{
			devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), devicebackend.AttrBytes(pkcs11.CKA_VALUE, der)}}); err != nil {
			return err
		}
	}
	return nil
}

// certTemplate is the certificate object of cert (C_CreateObject): what pkcs11-tool --write-object
// writes, which every token takes.
func certTemplate(cert *x509.Certificate, label string, id []byte) ([]devicebackend.Attr, error) {
	serial, err := asn1.Marshal(cert.SerialNumber)
	if err != nil {
		return nil, errclass.InputErr("certificate: serial number: %v", err)
	}
	return []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), devicebackend.AttrUlong(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		devicebackend.AttrBool(pkcs11.CKA_TOKEN, true), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, false), devicebackend.AttrString(pkcs11.CKA_LABEL, label),
		devicebackend.AttrBytes(pkcs11.CKA_ID, id), devicebackend.AttrBytes(pkcs11.CKA_SUBJECT, cert.RawSubject), devicebackend.AttrBytes(pkcs11.CKA_ISSUER, cert.RawIssuer),
		devicebackend.AttrBytes(pkcs11.CKA_SERIAL_NUMBER, serial), devicebackend.AttrBytes(pkcs11.CKA_VALUE, cert.Raw)}, nil
}
