package pkcs11ha

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// MaxSecretInput bounds the plaintext of Seal, the sealed input of Open and the data of MAC: envelope
// encryption seals data keys and MACs tokens; bulk data is encrypted with a data key instead.
const MaxSecretInput = 1 << 20

// SealOverhead is what Seal adds to the plaintext: the 12-byte nonce before it, the 16-byte tag after it.
const SealOverhead = devicebackend.GCMNonceSize + devicebackend.GCMTagSize

// SecretKey is one secret key of one partition, cloned on every device: an AES key seals and opens
// (AES-GCM), an HMAC key MACs. Each call is routed by the cluster to the nearest healthy device whose key
// has the catalogue's check value (docs/ARCHITECTURE.md, "Secret keys"). Under a context from WithOutcome
// a call reports the device that served it.
type SecretKey struct {
	cl    *Cluster
	pidx  int
	part  string
	entry *secretEntry
	hash  crypto.Hash // MAC's hash; 0 for an AES key
}

// Label returns the key's CKA_LABEL.
func (k *SecretKey) Label() string { return k.entry.label }

// Partition returns the partition name.
func (k *SecretKey) Partition() string { return k.part }

// Algorithm returns e.g. "AES_256" or "HMAC_SHA256".
func (k *SecretKey) Algorithm() string { return k.entry.alg }

// CheckValue returns the key check value in hex: the same for the same key on every device.
func (k *SecretKey) CheckValue() string { return hex.EncodeToString(k.entry.kcv) }

// Hash returns the hash MAC uses (0 for an AES key).
func (k *SecretKey) Hash() crypto.Hash { return k.hash }

// Info returns the key's SecretKeyInfo.
func (k *SecretKey) Info() SecretKeyInfo { return k.cl.secretInfo(k.entry) }

// WithHash returns the key MACing with hash h (SHA-256, -384 or -512). A generic secret key takes any of
// them; a key whose type names its hash (CKK_SHA384_HMAC...) only that one.
func (k *SecretKey) WithHash(h crypto.Hash) (*SecretKey, error) {
	if _, ok := devicebackend.HMACMechs[h]; !ok || k.hash == 0 {
		return nil, errclass.InputErr("mac: key %q (%s) cannot MAC with %v", k.entry.label, k.entry.alg, h)
	}
	if h != k.hash && k.entry.keyType != pkcs11.CKK_GENERIC_SECRET {
		return nil, errclass.InputErr("mac: key %q is %s: it MACs with %v only", k.entry.label, k.entry.alg, k.hash)
	}
	k2 := *k
	k2.hash = h
	return &k2, nil
}

// Seal encrypts plaintext with AES-GCM on a device and returns nonce ‖ ciphertext ‖ tag (SealOverhead
// bytes more than plaintext). The 96-bit nonce is fresh from crypto/rand for each call; aad is
// authenticated, not encrypted, and must be given again to Open.
func (k *SecretKey) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	out := startOutcome(ctx)
	if k.hash != 0 {
		return nil, errclass.InputErr("seal: key %q is %s, not AES", k.entry.label, k.entry.alg)
	}
	if len(plaintext) > MaxSecretInput || len(aad) > MaxSecretInput {
		return nil, errclass.InputErr("seal: input over %d bytes", MaxSecretInput)
	}
	nonce := make([]byte, devicebackend.GCMNonceSize, len(plaintext)+SealOverhead)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("pkcs11ha: seal: nonce: %w", err)
	}
	ct, err := k.encryptGCM(ctx, out, "seal", nonce, plaintext, aad, 8*devicebackend.GCMTagSize)
	if err != nil {
		return nil, err
	}
	return append(nonce, ct...), nil
}

// Open authenticates and decrypts what Seal returned, with the same aad. Input that does not authenticate
// (wrong key or aad, tampered, truncated) returns an *AuthError matching ErrAuthentication: the caller's
// input, never a device fault, never tried on another device. Under a context from WithOutcome it reports
// the device that decrypted, or refused to.
func (k *SecretKey) Open(ctx context.Context, sealed, aad []byte) ([]byte, error) {
	out := startOutcome(ctx)
	if k.hash != 0 {
		return nil, errclass.InputErr("open: key %q is %s, not AES", k.entry.label, k.entry.alg)
	}
	if len(sealed) > MaxSecretInput+SealOverhead || len(aad) > MaxSecretInput {
		return nil, errclass.InputErr("open: input over %d bytes", MaxSecretInput)
	}
	if len(sealed) < SealOverhead {
		return nil, errclass.NewAuthError(errclass.AuthOpen, "", fmt.Sprintf("%d bytes, shorter than nonce and tag", len(sealed)))
	}
	return k.decryptGCM(ctx, out, "open", sealed[:devicebackend.GCMNonceSize], sealed[devicebackend.GCMNonceSize:], aad, 8*devicebackend.GCMTagSize)
}

// encryptGCM runs one AES-GCM encryption through the cluster: ciphertext ‖ tag.
func (k *SecretKey) encryptGCM(ctx context.Context, out *Outcome, opName string, nonce, plaintext, aad []byte, tagBits int) ([]byte, error) {
	want := len(plaintext) + tagBits/8
	op := k.gcmOp(devicebackend.KindSeal, nonce, plaintext, aad, want, tagBits)
	return k.cl.doOn(ctx, opName, k.entry.mask.Load(), k.pidx, op, outputLen("C_Encrypt", want), out)
}

// decryptGCM runs one AES-GCM decryption of ciphertext ‖ tag (at least tagBits/8 bytes) through the
// cluster; a tag that does not match is an *AuthError.
func (k *SecretKey) decryptGCM(ctx context.Context, out *Outcome, opName string, nonce, ct, aad []byte, tagBits int) ([]byte, error) {
	want := len(ct) - tagBits/8
	op := k.gcmOp(devicebackend.KindOpen, nonce, ct, aad, want, tagBits)
	pt, err := k.cl.doOn(ctx, opName, k.entry.mask.Load(), k.pidx, op, outputLen("C_Decrypt", want), out)
	if err != nil {
		return nil, refusal(err, out, errclass.AuthOpen)
	}
	return pt, nil
}

// refusal turns a device's refusal of the caller's ciphertext (decrypt_refused) into an *AuthError of
// kind, naming the device that refused (also in out); any other error is returned as it is.
func refusal(err error, out *Outcome, kind errclass.AuthKind) error {
	var de *DeviceError
	if !errors.As(err, &de) || de.Class != ClassDecryptRefused {
		return err
	}
	if out != nil {
		out.Device = de.Device
	}
	return errclass.NewAuthError(kind, de.Device, "")
}

func (k *SecretKey) gcmOp(kind devicebackend.OpKind, nonce, in, aad []byte, outLen, tagBits int) *devicebackend.Op {
	return &devicebackend.Op{Kind: kind, Label: k.entry.label, PubDER: k.entry.kcv, Input: in, OutLen: outLen,
		Mech:        devicebackend.MechSpec{Type: pkcs11.CKM_AES_GCM, GCMIV: nonce, GCMAAD: aad, GCMTagBits: uint(tagBits)},
		GCMFallback: k.cl.s.own.GCMFallback}
}

// MAC returns the HMAC of data with the key's hash (Hash; WithHash picks another for a generic secret).
func (k *SecretKey) MAC(ctx context.Context, data []byte) ([]byte, error) {
	return k.mac(ctx, "mac", data)
}

func (k *SecretKey) mac(ctx context.Context, opName string, data []byte) ([]byte, error) {
	out := startOutcome(ctx)
	if k.hash == 0 {
		return nil, errclass.InputErr("mac: key %q is %s, not an HMAC key", k.entry.label, k.entry.alg)
	}
	if len(data) > MaxSecretInput {
		return nil, errclass.InputErr("mac: input over %d bytes", MaxSecretInput)
	}
	n := k.hash.Size()
	op := &devicebackend.Op{Kind: devicebackend.KindMAC, Label: k.entry.label, PubDER: k.entry.kcv, Input: data, OutLen: n,
		Mech: devicebackend.MechSpec{Type: devicebackend.HMACMechs[k.hash]}}
	return k.cl.doOn(ctx, opName, k.entry.mask.Load(), k.pidx, op, outputLen("C_Sign", n), out)
}

// VerifyMAC checks that mac is the key's HMAC of data (full length), comparing in constant time. A
// mismatch returns an *AuthError matching ErrMACMismatch, never counted against a device.
func (k *SecretKey) VerifyMAC(ctx context.Context, data, mac []byte) error {
	if k.hash != 0 && len(mac) != k.hash.Size() {
		startOutcome(ctx)
		return errclass.NewAuthError(errclass.AuthMAC, "", fmt.Sprintf("%d bytes, %v MACs have %d", len(mac), k.hash, k.hash.Size()))
	}
	want, err := k.mac(ctx, "verify_mac", data)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, mac) {
		dev := ""
		if o, _ := ctx.Value(outcomeKey{}).(*Outcome); o != nil {
			dev = o.Device
		}
		return errclass.NewAuthError(errclass.AuthMAC, dev, "")
	}
	return nil
}

// outputLen is the check of an attempt's output length: a device answering with another size failed
// that attempt (busy), and the call moves on.
func outputLen(fn string, n int) func([]byte) error {
	return func(v []byte) error {
		if len(v) != n {
			return &DeviceError{Op: fn, Class: ClassBusy, Err: fmt.Errorf("output of %d bytes, want %d", len(v), n)}
		}
		return nil
	}
}
