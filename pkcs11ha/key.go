package pkcs11ha

import (
	"context"
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sessionkey"
)

// Key is one key of one partition, cloned on every device. It implements crypto.Signer and
// crypto.Decrypter; each call is routed by the cluster to the nearest healthy device holding the key.
type Key struct {
	cl    *Cluster
	pidx  int
	part  string
	entry *keyEntry
}

var (
	_ crypto.Signer    = (*Key)(nil)
	_ crypto.Decrypter = (*Key)(nil)
)

// Public returns *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey.
func (k *Key) Public() crypto.PublicKey { return k.entry.pub }

// Label returns the key's CKA_LABEL.
func (k *Key) Label() string { return k.entry.label }

// Partition returns the partition name.
func (k *Key) Partition() string { return k.part }

// Algorithm returns e.g. "EC_P256", "RSA_2048" or "ED25519".
func (k *Key) Algorithm() string { return k.entry.alg }

// Sign implements crypto.Signer with the policy's operation timeout as the deadline. rand is unused: the
// HSM supplies its own randomness.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.cl.s.own.OperationTimeout)
	defer cancel()
	return k.SignContext(ctx, digest, opts)
}

// Decrypt implements crypto.Decrypter. opts may be nil (PKCS#1 v1.5), *rsa.OAEPOptions or
// *rsa.PKCS1v15DecryptOptions.
func (k *Key) Decrypt(rnd io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.cl.s.own.OperationTimeout)
	defer cancel()
	pt, err := k.DecryptContext(ctx, ciphertext, opts)
	return sessionkey.Apply(rnd, opts, pt, err)
}

// SignContext signs under the caller's deadline (each attempt also has its own, shorter one).
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, _, err := k.SignDevice(ctx, digest, opts)
	return sig, err
}

// SignDevice is SignContext that also names the device that made the signature.
func (k *Key) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	if opts == nil {
		return nil, "", inputErr("sign: nil SignerOpts")
	}
	plan, err := planSign(k.entry.pub, digest, opts)
	if err != nil {
		return nil, "", err
	}
	sig, dev, err := k.cl.do(ctx, "sign", k, plan.op())
	if err != nil {
		return nil, dev, err
	}
	if plan.ecdsa > 0 {
		sig, err = ecdsaDER(sig, plan.ecdsa)
	}
	return sig, dev, err
}

// DecryptContext decrypts under the caller's deadline. A refused decrypt returns an error matching
// rsa.ErrDecryption and is never retried on another device.
func (k *Key) DecryptContext(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	pt, _, err := k.DecryptDevice(ctx, ciphertext, opts)
	return pt, err
}

// DecryptDevice is DecryptContext that also names the device that decrypted.
func (k *Key) DecryptDevice(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, string, error) {
	pub, ok := k.entry.pub.(*rsa.PublicKey)
	if !ok {
		return nil, "", inputErr("decrypt: key %q is %s, not RSA", k.entry.label, k.entry.alg)
	}
	if len(ciphertext) != pub.Size() {
		return nil, "", inputErr("decrypt: ciphertext has %d bytes, the key needs %d", len(ciphertext), pub.Size())
	}
	var mech []*pkcs11.Mechanism
	var oaep *rsa.OAEPOptions
	switch o := opts.(type) {
	case nil, *rsa.PKCS1v15DecryptOptions:
		mech = mechRSAPKCS
	case *rsa.OAEPOptions:
		m, err := oaepMechanism(o, pub)
		if err != nil {
			return nil, "", err
		}
		mech, oaep = m, o
	default:
		return nil, "", inputErr("decrypt: options %T not supported (want nil, *rsa.OAEPOptions or *rsa.PKCS1v15DecryptOptions)", opts)
	}
	fallback := k.cl.s.own.OAEPFallback
	pt, dev, err := k.cl.do(ctx, "decrypt", k, func(c *pkcs11.Ctx, s pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, Op, error) {
		return decryptOn(c, s, h, mech, ciphertext, oaep, pub, fallback)
	})
	if err != nil {
		var de *DeviceError
		if errors.As(err, &de) && de.Class == ClassDecryptRefused {
			return nil, de.Device, fmt.Errorf("%w (device %s)", rsa.ErrDecryption, de.Device)
		}
		return nil, dev, err
	}
	return pt, dev, nil
}
