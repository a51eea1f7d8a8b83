package pkcs11ha

import (
	"context"
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
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

// SignContext signs under the caller's deadline (each attempt also has its own, shorter one). Under a
// context from WithOutcome it reports the device that signed.
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	out := startOutcome(ctx)
	if opts == nil {
		return nil, errclass.InputErr("sign: nil SignerOpts")
	}
	plan, err := planSign(k.entry.pub, digest, opts)
	if err != nil {
		return nil, err
	}
	sig, err := k.cl.do(ctx, "sign", k, plan.op(k.entry), k.check(plan, digest, opts), out)
	if err != nil {
		return nil, err
	}
	if plan.ecdsa > 0 {
		return ecdsaDER(sig, plan.ecdsa)
	}
	return sig, nil
}

// Decrypt implements crypto.Decrypter with the policy's operation timeout as the deadline. opts may be nil
// (PKCS#1 v1.5), *rsa.OAEPOptions or *rsa.PKCS1v15DecryptOptions. With SessionKeyLen set in the latter, a
// refused decryption (or a plaintext of another length) yields SessionKeyLen random bytes from rnd
// (crypto/rand when nil) instead of an error, as crypto/rsa does.
func (k *Key) Decrypt(rnd io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.cl.s.own.OperationTimeout)
	defer cancel()
	pt, err := k.decrypt(ctx, ciphertext, opts)
	return sessionkey.Apply(rnd, opts, pt, err)
}

// DecryptContext decrypts under the caller's deadline, with Decrypt's options and its session-key rule
// (the random bytes come from crypto/rand). A refused decrypt returns an error matching rsa.ErrDecryption
// and is never retried on another device. Under a context from WithOutcome it reports the device that
// decrypted, or refused to.
func (k *Key) DecryptContext(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	pt, err := k.decrypt(ctx, ciphertext, opts)
	return sessionkey.Apply(nil, opts, pt, err)
}

func (k *Key) decrypt(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	out := startOutcome(ctx)
	pub, ok := k.entry.pub.(*rsa.PublicKey)
	if !ok {
		return nil, errclass.InputErr("decrypt: key %q is %s, not RSA", k.entry.label, k.entry.alg)
	}
	if len(ciphertext) != pub.Size() {
		return nil, errclass.InputErr("decrypt: ciphertext has %d bytes, the key needs %d", len(ciphertext), pub.Size())
	}
	op := &devicebackend.Op{Kind: devicebackend.KindDecrypt, Label: k.entry.label, PubDER: k.entry.pubDER, Input: ciphertext,
		KeySize: pub.Size(), OAEPFallback: k.cl.s.own.OAEPFallback}
	switch o := opts.(type) {
	case nil, *rsa.PKCS1v15DecryptOptions:
		op.Mech = devicebackend.MechSpec{Type: pkcs11.CKM_RSA_PKCS}
	case *rsa.OAEPOptions:
		m, err := oaepMechanism(o, pub)
		if err != nil {
			return nil, err
		}
		op.Mech, op.OAEPHash, op.OAEPMGFHash = m, o.Hash, o.MGFHash
		if op.OAEPMGFHash == 0 {
			op.OAEPMGFHash = o.Hash
		}
	default:
		return nil, errclass.InputErr("decrypt: options %T not supported (want nil, *rsa.OAEPOptions or *rsa.PKCS1v15DecryptOptions)", opts)
	}
	pt, err := k.cl.do(ctx, "decrypt", k, op, nil, out)
	if err != nil {
		var de *DeviceError
		if errors.As(err, &de) && de.Class == ClassDecryptRefused {
			if out != nil {
				out.Device = de.Device
			}
			return nil, fmt.Errorf("%w (device %s)", rsa.ErrDecryption, de.Device)
		}
		return nil, err
	}
	return pt, nil
}

// Outcome is how one Sign or Decrypt call was served, reported through WithOutcome.
type Outcome struct {
	// Device is the device that served the call, or that refused to decrypt (rsa.ErrDecryption); "" when
	// no device answered.
	Device   string
	Attempts int  // attempts made, on any device, a hedge included
	Hedged   bool // a backup attempt was started
}

type outcomeKey struct{}

// WithOutcome returns a context under which every SignContext and DecryptContext call of a Key writes how
// it was served into *out, overwriting it (a call refused before any attempt leaves it zero). A worker can make this context once and derive each call's deadline from it: the calls then
// allocate nothing for the report. One Outcome must not serve concurrent calls.
func WithOutcome(ctx context.Context, out *Outcome) context.Context {
	return context.WithValue(ctx, outcomeKey{}, out)
}

// startOutcome returns the Outcome the caller asked for with WithOutcome, reset, or nil.
func startOutcome(ctx context.Context) *Outcome {
	out, _ := ctx.Value(outcomeKey{}).(*Outcome)
	if out != nil {
		*out = Outcome{}
	}
	return out
}
