package pkcs11ha

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// Creating and destroying keys on every device of a partition (docs/ARCHITECTURE.md, "Key management").

// Errors of key management callers branch on.
var (
	// ErrKeyExists: a key with that label is on some device already, or another key with the same label
	// was created at the same time and won (the concurrency rule of docs/keys.md).
	ErrKeyExists = errors.New("pkcs11ha: a key with this label exists")
	// ErrQuorum: the key could not be put on every reachable device and on at least min_key_replicas.
	ErrQuorum = errors.New("pkcs11ha: key not replicated to enough devices")
	// ErrNoKEK: key_replication wrap needs the partition's trusted key-encryption key on the devices
	// (hsm-ha-proxy keys init-kek).
	ErrNoKEK = errors.New("pkcs11ha: no trusted key-encryption key")
)

// ReplicationError says which devices did an operation and which refused, and why.
type ReplicationError struct {
	Op, Partition, Label string
	Done                 []string
	Refused              map[string]string // device -> why
	Need                 int               // devices that had to do it
	Err                  error             // ErrQuorum, ErrNoKEK, ...
}

func (e *ReplicationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pkcs11ha: %s key %q in partition %q: done on %d device(s) %v, need %d", e.Op, e.Label, e.Partition, len(e.Done), e.Done, e.Need)
	for _, d := range slices.Sorted(maps.Keys(e.Refused)) {
		fmt.Fprintf(&b, "; refused by %s: %s", d, e.Refused[d])
	}
	return b.String()
}

func (e *ReplicationError) Unwrap() error { return e.Err }

// madeKey is a key being created: its public half and the devices that hold it.
type madeKey struct {
	label   string
	id      []byte
	keyType uint
	pub     crypto.PublicKey
	pubDER  []byte
	fp      string
	alg     string
	done    []string
	refused map[string]string
}

// onEach runs f on every device of ds at once and sorts the outcomes into done and refused.
func onEach(ds []*clusterDevice, f func(d *clusterDevice) error) (done []string, refused map[string]string) {
	refused = map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(func() {
			err := f(d)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused[d.name] = err.Error()
				if lost(err) {
					refused[d.name] = lostMark + err.Error()
				}
			} else {
				done = append(done, d.name)
			}
		})
	}
	wg.Wait()
	sort.Strings(done)
	return done, refused
}

// lostMark starts the refusal of a device that went away during the operation (down, or past its
// deadline): it no longer counts as reachable, and the sync catches it up when it returns.
const lostMark = "unreachable: "

// lost reports whether err says the device went away rather than refused.
func lost(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errclass.ClassOf(err) == ClassDeviceDown
}

// blocking counts the refusals that fail a creation: those of devices still reachable.
func blocking(refused map[string]string) int {
	n := 0
	for _, why := range refused {
		if !strings.HasPrefix(why, lostMark) {
			n++
		}
	}
	return n
}

// adminStart resolves partition and the devices to address, and refuses when fewer than
// min_key_replicas are reachable.
func (cl *Cluster) adminStart(partition string) (int, *PartitionConfig, []*clusterDevice, error) {
	if cl.closed.Load() {
		return 0, nil, nil, ErrClosed
	}
	pi, err := cl.partIndex(partition)
	if err != nil {
		return 0, nil, nil, err
	}
	pc := &cl.s.cfg.Partitions[pi]
	in, out := cl.adminTargets(pi)
	if need := pc.minReplicas(len(cl.devices)); len(in) < need {
		names := make([]string, 0, len(out))
		for _, d := range out {
			names = append(names, d.name)
		}
		return 0, nil, nil, fmt.Errorf("%w: %d device(s) reachable in partition %q, min_key_replicas is %d (down: %s)",
			ErrQuorum, len(in), partition, need, strings.Join(names, ", "))
	}
	return pi, pc, in, nil
}

// GenerateKey creates a key pair on every reachable device of partition, by the partition's
// key_replication (docs/keys.md). It succeeds only when the key is on every reachable device and on at
// least min_key_replicas; otherwise what was made is withdrawn (tombstoned and destroyed) and the error,
// a *ReplicationError, names the devices that refused. The returned KeyInfo lists the devices holding it.
func (cl *Cluster) GenerateKey(ctx context.Context, partition string, spec KeySpec) (KeyInfo, error) {
	if err := spec.validate(); err != nil {
		return KeyInfo{}, err
	}
	pi, pc, targets, err := cl.adminStart(partition)
	if err != nil {
		return KeyInfo{}, err
	}
	if targets, err = cl.labelFree(ctx, pi, targets, spec.Label); err != nil {
		return KeyInfo{}, err
	}
	var m *madeKey
	switch pc.replication() {
	case ReplicationImport:
		var key crypto.Signer
		if key, err = softKey(&spec); err == nil {
			m, err = cl.importOn(ctx, pi, targets, spec.Label, spec.ID, key, false)
			wipeKey(key)
		}
	case ReplicationVendor:
		if m, err = cl.generateOn(ctx, pi, targets[0], &spec, false); err == nil {
			err = cl.verifyVendor(ctx, pi, targets, m)
		}
	default:
		m, err = cl.generateWrap(ctx, pi, targets, &spec)
	}
	return cl.finishCreate(ctx, "generate", pi, targets, m, err)
}

// ImportKey puts an existing private key (PKCS#8 DER, RSA or EC P-256/P-384) on every reachable device
// of partition, under spec's label and ID (spec.Algorithm is ignored), with GenerateKey's quorum. Under
// key_replication wrap the imported key may later be copied wrapped under the trusted key (a device
// restored by sync); otherwise it never leaves the devices.
func (cl *Cluster) ImportKey(ctx context.Context, partition string, spec KeySpec, pkcs8 []byte) (KeyInfo, error) {
	parsed, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return KeyInfo{}, errclass.InputErr("import: not a PKCS#8 private key: %v", err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return KeyInfo{}, errclass.InputErr("import: unsupported key %T", parsed)
	}
	defer wipeKey(key)
	if spec.Label == "" {
		return KeyInfo{}, errclass.InputErr("key label is required")
	}
	pi, pc, targets, err := cl.adminStart(partition)
	if err != nil {
		return KeyInfo{}, err
	}
	if targets, err = cl.labelFree(ctx, pi, targets, spec.Label); err != nil {
		return KeyInfo{}, err
	}
	var m *madeKey
	switch pc.replication() {
	case ReplicationVendor:
		if m, err = cl.importOn(ctx, pi, targets[:1], spec.Label, spec.ID, key, false); err == nil && len(m.refused) == 0 {
			err = cl.verifyVendor(ctx, pi, targets, m)
		}
	default:
		m, err = cl.importOn(ctx, pi, targets, spec.Label, spec.ID, key, pc.replication() == ReplicationWrap)
	}
	return cl.finishCreate(ctx, "import", pi, targets, m, err)
}

// softKey generates spec's key in memory (key_replication import).
func softKey(spec *KeySpec) (crypto.Signer, error) {
	if bits := spec.rsaBits(); bits > 0 {
		return rsa.GenerateKey(rand.Reader, bits)
	}
	return ecdsa.GenerateKey(spec.curve(), rand.Reader)
}

// labelFree checks that no reachable device holds a private key labelled label, and returns the devices
// still reachable.
func (cl *Cluster) labelFree(ctx context.Context, pi int, targets []*clusterDevice, label string) ([]*clusterDevice, error) {
	var mu sync.Mutex
	var held []string
	_, refused := onEach(targets, func(d *clusterDevice) error {
		r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind,
			Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, label)}})
		if err == nil && len(r.Objects) > 0 {
			mu.Lock()
			held = append(held, d.name)
			mu.Unlock()
		}
		return err
	})
	if len(held) > 0 {
		sort.Strings(held)
		return nil, fmt.Errorf("%w: %q in partition %q (on %s)", ErrKeyExists, label, cl.parts[pi].name, strings.Join(held, ", "))
	}
	need := cl.s.cfg.Partitions[pi].minReplicas(len(cl.devices))
	if blocking(refused) > 0 || len(targets)-len(refused) < need {
		return nil, &ReplicationError{Op: "check", Partition: cl.parts[pi].name, Label: label, Refused: refused, Need: len(targets), Err: ErrQuorum}
	}
	var left []*clusterDevice // without the devices that went away: the sync catches them up
	for _, d := range targets {
		if _, gone := refused[d.name]; !gone {
			left = append(left, d)
		}
	}
	return left, nil
}

// importOn creates key (private and public objects) on every device of ds.
func (cl *Cluster) importOn(ctx context.Context, pi int, ds []*clusterDevice, label string, id []byte, key crypto.Signer, wrappable bool) (*madeKey, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, errclass.InputErr("import: %v", err)
	}
	if len(id) == 0 {
		id = keyIdentifier(der)
	}
	m := &madeKey{label: label, id: id, pub: key.Public(), pubDER: der, fp: Fingerprint(der)}
	m.alg, m.keyType = algOf(m.pub)
	privT, err := importAttrs(label, id, key, wrappable)
	if err != nil {
		return nil, err
	}
	defer wipeAttrs(privT)
	pubT, err := publicAttrs(label, id, m.pub)
	if err != nil {
		return nil, err
	}
	m.done, m.refused = onEach(ds, func(d *clusterDevice) error {
		// The public object first: a key listing in between then finds no private key without its public.
		if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminCreate, Template: pubT}); err != nil {
			return err
		}
		_, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminCreate, Template: privT})
		return err
	})
	return m, nil
}

// algOf names a public key's algorithm as the catalogue does, with its PKCS#11 key type.
func algOf(pub crypto.PublicKey) (string, uint) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA_%d", k.N.BitLen()), pkcs11.CKK_RSA
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize == 384 {
			return AlgECP384, pkcs11.CKK_EC
		}
		return AlgECP256, pkcs11.CKK_EC
	}
	return "", 0
}

// generateOn generates spec's key pair inside device d; without spec.ID its CKA_ID is then set to the
// public key's identifier (a temporary random ID names the objects until then).
func (cl *Cluster) generateOn(ctx context.Context, pi int, d *clusterDevice, spec *KeySpec, wrappable bool) (*madeKey, error) {
	s := *spec
	if len(s.ID) == 0 {
		s.ID = make([]byte, 16)
		_, _ = rand.Read(s.ID)
	}
	pubT, privT := s.templates(wrappable)
	r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminGenerateKeyPair, Mech: s.mechanism(), Template: pubT, Private: privT, Read: pubReads})
	if err != nil {
		return nil, err
	}
	pub, der, alg, err := publicFromAttrs(r.Objects[0])
	if err != nil {
		return nil, fmt.Errorf("device %s: reading the new public key: %w", d.name, err)
	}
	m := &madeKey{label: s.Label, id: s.ID, keyType: s.keyType(), pub: pub, pubDER: der, fp: Fingerprint(der), alg: alg,
		done: []string{d.name}, refused: map[string]string{}}
	if len(spec.ID) == 0 {
		m.id = keyIdentifier(der)
		for _, class := range []uint{pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
			if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminSetAttributes,
				Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, class), devicebackend.AttrBytes(pkcs11.CKA_ID, s.ID)},
				Set:      []devicebackend.Attr{devicebackend.AttrBytes(pkcs11.CKA_ID, m.id)}}); err != nil {
				m.id = s.ID // what the objects are still called, for the withdrawal
				return m, err
			}
		}
	}
	return m, nil
}

// verifyVendor (key_replication vendor) waits until every device of targets shows m, as the device's own
// replication puts it there, up to policy.admin_timeout.
func (cl *Cluster) verifyVendor(ctx context.Context, pi int, targets []*clusterDevice, m *madeKey) error {
	ctx, cancel := context.WithTimeout(ctx, cl.s.own.AdminTimeout)
	defer cancel()
	pending := targets[1:]
	for len(pending) > 0 {
		var still []*clusterDevice
		for _, h := range cl.readHoldings(ctx, pi, pending) {
			switch k := h.key(m.label, ""); {
			case h.err != nil:
				m.refused[h.dev.name] = h.err.Error()
			case k == nil:
				still = append(still, h.dev)
			case k.fp != m.fp:
				m.refused[h.dev.name] = "holds a different key under this label"
			default:
				m.done = append(m.done, h.dev.name)
			}
		}
		if pending = still; len(pending) == 0 {
			break
		}
		if waitOrDone(ctx, cl.s.own.AdminTimeout/50) != nil {
			for _, d := range pending {
				m.refused[d.name] = "the key did not appear (key_replication vendor: the device did not replicate it)"
			}
			break
		}
	}
	sort.Strings(m.done)
	return nil
}

// finishCreate applies the quorum rule to a creation, withdraws a failed one, settles a race with a
// concurrent creation of the same label and writes the audit line.
func (cl *Cluster) finishCreate(ctx context.Context, action string, pi int, targets []*clusterDevice, m *madeKey, err error) (KeyInfo, error) {
	pc := &cl.s.cfg.Partitions[pi]
	label, fp := "", ""
	var done []string
	var refused map[string]string
	if m != nil {
		label, fp, done, refused = m.label, m.fp, m.done, m.refused
	}
	// Every device reachable at the end, and min_key_replicas: a device that went away meanwhile is
	// caught up by the sync when it returns, as one that was down from the start.
	need := max(pc.minReplicas(len(cl.devices)), len(targets)-(len(refused)-blocking(refused)))
	if err == nil && (blocking(refused) > 0 || len(done) < need) {
		err = &ReplicationError{Op: action, Partition: pc.Name, Label: label, Done: done, Refused: refused, Need: need, Err: ErrQuorum}
	}
	if err != nil && m != nil && len(done) > 0 {
		cl.withdraw(ctx, pi, targets, m.label, m.id, m.fp)
	}
	if err == nil {
		err = cl.settleRace(ctx, pi, targets, m)
	}
	cl.audit(ctx, action, pc.Name, label, fp, done, refused, err)
	if err != nil {
		return KeyInfo{}, err
	}
	return KeyInfo{Label: m.label, ID: hexID(m.id), Algorithm: m.alg, Public: m.pub, Devices: m.done,
		Excluded: map[string]string{}, Fingerprint: m.fp}, nil
}

// withdraw removes one key (label, id, fingerprint fp) from every device of ds: a tombstone first, so
// that a copy on a device out of reach now is removed by the sync when it returns, then the objects.
func (cl *Cluster) withdraw(ctx context.Context, pi int, ds []*clusterDevice, label string, id []byte, fp string) (done []string, refused map[string]string) {
	cl.noteTombs(pi, fp)
	defer cl.checkKeys()
	return onEach(ds, func(d *clusterDevice) error {
		if err := cl.tombstone(ctx, pi, d, label, fp); err != nil {
			return err
		}
		return cl.destroyPair(ctx, pi, d, label, id)
	})
}

// tombstone writes the tombstone of fp on device d unless it is there.
func (cl *Cluster) tombstone(ctx context.Context, pi int, d *clusterDevice, label, fp string) error {
	tmpl := []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), devicebackend.AttrString(pkcs11.CKA_APPLICATION, tombstoneApp),
		devicebackend.AttrBytes(pkcs11.CKA_VALUE, []byte(fp))}
	r, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Template: tmpl})
	if err != nil || len(r.Objects) > 0 {
		return err
	}
	tmpl = append(tmpl, devicebackend.AttrBool(pkcs11.CKA_TOKEN, true), devicebackend.AttrBool(pkcs11.CKA_PRIVATE, true), devicebackend.AttrString(pkcs11.CKA_LABEL, label))
	_, err = cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminCreate, Template: tmpl})
	return err
}

// destroyPair destroys the private and public objects labelled label with CKA_ID id on device d.
func (cl *Cluster) destroyPair(ctx context.Context, pi int, d *clusterDevice, label string, id []byte) error {
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		if _, err := cl.adminOn(ctx, d, pi, &devicebackend.AdminOp{Kind: devicebackend.AdminDestroy, Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, class),
			devicebackend.AttrString(pkcs11.CKA_LABEL, label), devicebackend.AttrBytes(pkcs11.CKA_ID, id)}}); err != nil {
			return err
		}
	}
	return nil
}

// DestroyKey removes the key labelled label from every reachable device of partition: each gets a
// tombstone naming the key's public-key fingerprint, then loses the key's objects. A device out of reach
// loses it at the sync after it returns, and no sync ever brings the key back. It succeeds when the
// tombstone is on at least min_key_replicas devices (the error otherwise names those that refused).
func (cl *Cluster) DestroyKey(ctx context.Context, partition, label string) error {
	pi, pc, targets, err := cl.adminStart(partition)
	if err != nil {
		return err
	}
	found := map[string]*devKey{} // fingerprint -> a copy
	refused := map[string]string{}
	for _, h := range cl.readHoldings(ctx, pi, targets) {
		if h.err != nil {
			refused[h.dev.name] = h.err.Error()
			continue
		}
		for _, k := range h.keys {
			if k.label == label {
				found[k.fp] = k
			}
		}
	}
	if len(found) == 0 {
		err := fmt.Errorf("%w: %q in partition %q (on no reachable device)", ErrUnknownKey, label, partition)
		cl.audit(ctx, "destroy", partition, label, "", nil, refused, err)
		return err
	}
	need := pc.minReplicas(len(cl.devices))
	var errs []error
	for _, fp := range slices.Sorted(maps.Keys(found)) {
		k := found[fp]
		done, why := cl.withdraw(ctx, pi, targets, label, k.id, fp)
		var err error
		if len(done) < need {
			err = &ReplicationError{Op: "destroy", Partition: partition, Label: label, Done: done, Refused: why, Need: need, Err: ErrQuorum}
			errs = append(errs, err)
		}
		cl.audit(ctx, "destroy", partition, label, fp, done, why, err)
	}
	return errors.Join(errs...)
}
