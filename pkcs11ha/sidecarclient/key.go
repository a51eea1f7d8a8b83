package sidecarclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sessionkey"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// Key is a key of a partition served by the sidecar. It implements crypto.Signer and crypto.Decrypter;
// every call is one request to the sidecar, which routes it to a device.
type Key struct {
	c         *Client
	partition string
	info      sidecarapi.KeyInfo
	pub       crypto.PublicKey
}

var (
	_ crypto.Signer    = (*Key)(nil)
	_ crypto.Decrypter = (*Key)(nil)
)

// Public returns *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Info returns the key as the sidecar described it when the Key was fetched.
func (k *Key) Info() sidecarapi.KeyInfo { return k.info }

// Partition returns the partition name.
func (k *Key) Partition() string { return k.partition }

// Label returns the key's label.
func (k *Key) Label() string { return k.info.Label }

// Sign implements crypto.Signer with the client's Timeout as the deadline. rand is unused: the HSM
// supplies its own randomness.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.c.timeout())
	defer cancel()
	return k.SignContext(ctx, digest, opts)
}

// SignContext signs under the caller's deadline. For Ed25519 keys digest is the message itself.
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, _, err := k.SignDevice(ctx, digest, opts)
	return sig, err
}

// SignDevice is SignContext that also returns the name of the device that made the signature.
func (k *Key) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	alg, err := SignAlgorithm(k.pub, opts)
	if err != nil {
		return nil, "", err
	}
	req := sidecarapi.SignRequest{Algorithm: alg}
	if alg == sidecarapi.AlgEd25519 {
		req.Message = base64.StdEncoding.EncodeToString(digest)
	} else {
		if h := opts.HashFunc(); len(digest) != h.Size() {
			return nil, "", fmt.Errorf("sidecarclient: digest has %d bytes, %v needs %d", len(digest), h, h.Size())
		}
		req.Digest = base64.StdEncoding.EncodeToString(digest)
	}
	var resp sidecarapi.SignResponse
	if err := k.c.do(ctx, http.MethodPost, keyPath(k.partition, k.info.Label)+"/sign", req, &resp); err != nil {
		return nil, "", err
	}
	sig, err := base64.StdEncoding.DecodeString(resp.Signature)
	if err != nil {
		return nil, "", fmt.Errorf("sidecarclient: signature is not base64: %w", err)
	}
	return sig, resp.Device, nil
}

// Decrypt implements crypto.Decrypter with the client's Timeout as the deadline. opts may be nil
// (PKCS#1 v1.5), *rsa.PKCS1v15DecryptOptions or *rsa.OAEPOptions. With PKCS1v15DecryptOptions.SessionKeyLen
// set, a refused decryption returns a random key instead of an error, as crypto/rsa does.
func (k *Key) Decrypt(rnd io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.c.timeout())
	defer cancel()
	pt, err := k.decrypt(ctx, ciphertext, opts)
	return sessionkey.Apply(rnd, opts, pt, err)
}

// DecryptContext decrypts under the caller's deadline, with Decrypt's options and its session-key rule
// (the random key comes from crypto/rand). A refused decryption returns an *APIError that matches
// rsa.ErrDecryption.
func (k *Key) DecryptContext(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	pt, err := k.decrypt(ctx, ciphertext, opts)
	return sessionkey.Apply(nil, opts, pt, err)
}

func (k *Key) decrypt(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	alg, err := DecryptAlgorithm(k.pub, opts)
	if err != nil {
		return nil, err
	}
	req := sidecarapi.DecryptRequest{Ciphertext: base64.StdEncoding.EncodeToString(ciphertext), Algorithm: alg}
	var resp sidecarapi.DecryptResponse
	if err := k.c.do(ctx, http.MethodPost, keyPath(k.partition, k.info.Label)+"/decrypt", req, &resp); err != nil {
		return nil, err
	}
	pt, err := base64.StdEncoding.DecodeString(resp.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("sidecarclient: plaintext is not base64: %w", err)
	}
	return pt, nil
}

// The sign algorithm names per hash, for each family that takes a digest.
var (
	pkcs1Algs = map[crypto.Hash]string{
		crypto.SHA256: sidecarapi.AlgRSAPKCS1SHA256, crypto.SHA384: sidecarapi.AlgRSAPKCS1SHA384, crypto.SHA512: sidecarapi.AlgRSAPKCS1SHA512}
	pssAlgs = map[crypto.Hash]string{
		crypto.SHA256: sidecarapi.AlgRSAPSSSHA256, crypto.SHA384: sidecarapi.AlgRSAPSSSHA384, crypto.SHA512: sidecarapi.AlgRSAPSSSHA512}
	ecdsaAlgs = map[crypto.Hash]string{
		crypto.SHA256: sidecarapi.AlgECDSASHA256, crypto.SHA384: sidecarapi.AlgECDSASHA384, crypto.SHA512: sidecarapi.AlgECDSASHA512}
)

// SignAlgorithm maps a public key and crypto.SignerOpts to the API's sign algorithm name.
func SignAlgorithm(pub crypto.PublicKey, opts crypto.SignerOpts) (string, error) {
	if opts == nil {
		return "", errors.New("sidecarclient: sign: nil SignerOpts")
	}
	h := opts.HashFunc()
	switch pub.(type) {
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			alg, ok := pssAlgs[h]
			if !ok {
				return "", fmt.Errorf("sidecarclient: sign: RSA-PSS with %v is not supported (SHA-256, SHA-384 or SHA-512)", h)
			}
			if pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size() {
				return "", fmt.Errorf("sidecarclient: sign: RSA-PSS salt length %d is not supported: the sidecar signs with salt length = hash length (use rsa.PSSSaltLengthEqualsHash)", pss.SaltLength)
			}
			return alg, nil
		}
		alg, ok := pkcs1Algs[h]
		if !ok {
			return "", fmt.Errorf("sidecarclient: sign: RSA PKCS#1 v1.5 with %v is not supported (SHA-256, SHA-384 or SHA-512)", h)
		}
		return alg, nil
	case *ecdsa.PublicKey:
		if _, ok := opts.(*rsa.PSSOptions); ok {
			return "", errors.New("sidecarclient: sign: RSA-PSS options for an ECDSA key")
		}
		alg, ok := ecdsaAlgs[h]
		if !ok {
			return "", fmt.Errorf("sidecarclient: sign: ECDSA with %v is not supported (SHA-256, SHA-384 or SHA-512)", h)
		}
		return alg, nil
	case ed25519.PublicKey:
		if eo, ok := opts.(*ed25519.Options); ok && (eo.Hash != 0 || eo.Context != "") {
			return "", errors.New("sidecarclient: sign: only pure Ed25519 is supported (no Ed25519ph, no context)")
		}
		if h != 0 {
			return "", errors.New("sidecarclient: sign: Ed25519 signs the message itself: use crypto.Hash(0)")
		}
		return sidecarapi.AlgEd25519, nil
	}
	return "", fmt.Errorf("sidecarclient: sign: unsupported public key type %T", pub)
}

// DecryptAlgorithm maps a public key and crypto.DecrypterOpts to the API's decrypt algorithm name.
func DecryptAlgorithm(pub crypto.PublicKey, opts crypto.DecrypterOpts) (string, error) {
	if _, ok := pub.(*rsa.PublicKey); !ok {
		return "", fmt.Errorf("sidecarclient: decrypt: key is %T, not RSA", pub)
	}
	switch o := opts.(type) {
	case nil, *rsa.PKCS1v15DecryptOptions:
		return sidecarapi.AlgRSAPKCS1, nil
	case *rsa.OAEPOptions:
		if o.MGFHash != 0 && o.MGFHash != o.Hash {
			return "", fmt.Errorf("sidecarclient: decrypt: OAEP with MGF1-%v and %v: the API uses MGF1 with the same hash", o.MGFHash, o.Hash)
		}
		if len(o.Label) > 0 {
			return "", errors.New("sidecarclient: decrypt: OAEP labels are not supported by the API")
		}
		switch o.Hash {
		case crypto.SHA1:
			return sidecarapi.AlgRSAOAEPSHA1, nil
		case crypto.SHA256:
			return sidecarapi.AlgRSAOAEPSHA256, nil
		}
		return "", fmt.Errorf("sidecarclient: decrypt: OAEP with %v is not supported (SHA-1 or SHA-256)", o.Hash)
	}
	return "", fmt.Errorf("sidecarclient: decrypt: options %T not supported (want nil, *rsa.OAEPOptions or *rsa.PKCS1v15DecryptOptions)", opts)
}

// parsePublicPEM parses a PEM "PUBLIC KEY" (SubjectPublicKeyInfo) block.
func parsePublicPEM(s string) (crypto.PublicKey, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("public_key is not a PEM PUBLIC KEY block")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public_key: %w", err)
	}
	switch pub.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		return pub, nil
	}
	return nil, fmt.Errorf("public_key: unsupported key type %T", pub)
}
