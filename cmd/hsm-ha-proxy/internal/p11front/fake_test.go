package p11front

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// fakeBackend is a cluster made of software keys: partition -> label -> key.
type fakeBackend struct {
	mu       sync.Mutex
	parts    map[string]map[string]*fakeKey
	signs    atomic.Int64
	decrypts atomic.Int64
}

type fakeKey struct {
	label string
	id    []byte
	priv  crypto.Signer
	cert  []byte // the key's certificate (DER) or nil; under fakeBackend.mu
	mu    sync.Mutex
	// fail, when set, is returned by every operation (a cluster that cannot serve).
	fail error
	// block, when set, holds every signature until it is closed or the call's context ends.
	block   chan struct{}
	started chan struct{} // receives when a held signature starts
	be      *fakeBackend
}

func newFakeBackend() *fakeBackend { return &fakeBackend{parts: map[string]map[string]*fakeKey{}} }

func (b *fakeBackend) add(partition, label string, id []byte, priv crypto.Signer) *fakeKey {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.parts[partition] == nil {
		b.parts[partition] = map[string]*fakeKey{}
	}
	k := &fakeKey{label: label, id: id, priv: priv, be: b}
	b.parts[partition][label] = k
	return k
}

func (b *fakeBackend) Keys(partition string) ([]pkcs11ha.KeyInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keys, ok := b.parts[partition]
	if !ok {
		return nil, fmt.Errorf("%w: %q", pkcs11ha.ErrUnknownPartition, partition)
	}
	var out []pkcs11ha.KeyInfo
	for _, k := range keys {
		out = append(out, pkcs11ha.KeyInfo{Label: k.label, ID: hex.EncodeToString(k.id), Public: k.priv.Public(), Devices: []string{"soft-1"},
			Certificate: k.cert})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out, nil
}

// setCert gives a key a certificate (nil: none), as the cluster does when the devices hold one.
func (b *fakeBackend) setCert(partition, label string, der []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.parts[partition][label].cert = der
}

func (b *fakeBackend) Key(ctx context.Context, partition, label string) (KeyHandle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.parts[partition][label]
	if k == nil {
		return nil, fmt.Errorf("%w: %q", pkcs11ha.ErrUnknownKey, label)
	}
	return k, nil
}

// SecretKeys: the fake cluster has none (secret keys are tested on real devices, secret_test.go).
func (b *fakeBackend) SecretKeys(partition string) ([]pkcs11ha.SecretKeyInfo, error) {
	if _, err := b.Keys(partition); err != nil {
		return nil, err
	}
	return nil, nil
}

func (b *fakeBackend) SecretKey(_ context.Context, _, label string) (SecretHandle, error) {
	return nil, fmt.Errorf("%w: secret key %q", pkcs11ha.ErrUnknownKey, label)
}

func (k *fakeKey) Public() crypto.PublicKey { return k.priv.Public() }

func (k *fakeKey) setFail(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail = err
}

func (k *fakeKey) failure() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.fail
}

func (k *fakeKey) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	if err := k.failure(); err != nil {
		return nil, "none", err
	}
	if k.block != nil {
		k.started <- struct{}{}
		select {
		case <-k.block:
		case <-ctx.Done():
			return nil, "none", ctx.Err()
		}
	}
	k.be.signs.Add(1)
	sig, err := k.priv.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, "none", &pkcs11ha.InputError{Msg: err.Error()}
	}
	return sig, "soft-1", nil
}

func (k *fakeKey) DecryptDevice(ctx context.Context, ct []byte, opts crypto.DecrypterOpts) ([]byte, string, error) {
	if err := k.failure(); err != nil {
		return nil, "none", err
	}
	d, ok := k.priv.(crypto.Decrypter)
	if !ok {
		return nil, "none", &pkcs11ha.InputError{Msg: "not RSA"}
	}
	k.be.decrypts.Add(1)
	pt, err := d.Decrypt(rand.Reader, ct, opts)
	if err != nil {
		return nil, "soft-1", errors.Join(err, errors.New("refused"))
	}
	return pt, "soft-1", nil
}

// fakeAuth grants partitions by uid.
type fakeAuth map[int][]string

func (a fakeAuth) UnixClient(uid, _ int) (string, map[string]bool, bool) {
	parts, ok := a[uid]
	if !ok {
		return "", nil, false
	}
	m := map[string]bool{}
	for _, p := range parts {
		m[p] = true
	}
	return fmt.Sprintf("client-%d", uid), m, true
}

// reqOf is one entry of a C_GetAttributeValue template.
func reqOf(typ, n uint64, null bool) p11rpc.AttributeRequest {
	return p11rpc.AttributeRequest{Type: typ, Len: n, Null: null}
}
