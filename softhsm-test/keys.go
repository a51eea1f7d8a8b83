package softhsmtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"sync"
)

// Key kinds for KeySpec.Kind.
const (
	KindRSA2048 = "rsa2048"
	KindECP256  = "ecp256"
	KindECP384  = "ecp384"
	KindEd25519 = "ed25519"
)

// KeySpec is a key pair imported into every token (partition) of every device.
type KeySpec struct {
	Label string // CKA_LABEL of the private and the public object
	ID    []byte // CKA_ID of both objects
	Kind  string // KindRSA2048, KindECP256, KindECP384 or KindEd25519
}

// DefaultKeys are rsa-key (id 01, RSA-2048), ec-key (02, P-256), ec384-key (03, P-384) and ed-key (04,
// Ed25519). SoftHSM 2.6.1 imports Ed25519 keys, but p11-kit 0.24 cannot carry CKM_EDDSA over its RPC:
// use ed-key through an InProcess device.
func DefaultKeys() []KeySpec {
	return []KeySpec{
		{Label: "rsa-key", ID: []byte{0x01}, Kind: KindRSA2048},
		{Label: "ec-key", ID: []byte{0x02}, Kind: KindECP256},
		{Label: "ec384-key", ID: []byte{0x03}, Kind: KindECP384},
		{Label: "ed-key", ID: []byte{0x04}, Kind: KindEd25519},
	}
}

func validKind(kind string) bool {
	switch kind {
	case KindRSA2048, KindECP256, KindECP384, KindEd25519:
		return true
	}
	return false
}

func generateKey(kind string) (crypto.Signer, error) {
	switch kind {
	case KindRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case KindECP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KindECP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KindEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("softhsmtest: unknown key kind %q", kind)
}

// Keys are test keys: they are generated once per process and per (kind, label, variant) and reused by
// every topology, because RSA key generation is slow on a loaded machine.
var keyCache struct {
	mu sync.Mutex
	m  map[string]*cachedKey
}

type cachedKey struct {
	once sync.Once
	key  crypto.Signer
	err  error
}

// testKey returns the process-wide key for (kind, label, variant); variant "" is the normal key,
// another variant a different key with the same kind and label.
func testKey(kind, label, variant string) (crypto.Signer, error) {
	name := kind + "\x00" + label + "\x00" + variant
	keyCache.mu.Lock()
	if keyCache.m == nil {
		keyCache.m = make(map[string]*cachedKey)
	}
	e := keyCache.m[name]
	if e == nil {
		e = &cachedKey{}
		keyCache.m[name] = e
	}
	keyCache.mu.Unlock()
	e.once.Do(func() { e.key, e.err = generateKey(kind) })
	return e.key, e.err
}

// SoftKeys are software keys for tests that need keys but no HSM.
type SoftKeys struct {
	RSA *rsa.PrivateKey   // 2048 bits
	EC  *ecdsa.PrivateKey // P-256
	Ed  ed25519.PrivateKey
}

// SharedSoftKeys returns the process-wide SoftKeys (generated once, like the keys imported into tokens).
func SharedSoftKeys() (SoftKeys, error) {
	var ks [3]crypto.Signer
	for i, kind := range []string{KindRSA2048, KindECP256, KindEd25519} {
		k, err := testKey(kind, "soft", "")
		if err != nil {
			return SoftKeys{}, fmt.Errorf("softhsmtest: %s key: %w", kind, err)
		}
		ks[i] = k
	}
	return SoftKeys{RSA: ks[0].(*rsa.PrivateKey), EC: ks[1].(*ecdsa.PrivateKey), Ed: ks[2].(ed25519.PrivateKey)}, nil
}

// writeKeyPEM writes key as an unencrypted PKCS#8 PEM file, readable by the owner only.
func writeKeyPEM(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("softhsmtest: marshal key for %s: %w", path, err)
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
