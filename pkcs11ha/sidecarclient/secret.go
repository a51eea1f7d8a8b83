package sidecarclient

import (
	"context"
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// Errors of SecretKey.Open and VerifyMAC, matched by the sidecar's answers (errors.Is): the input did not
// authenticate (400 decryption_failed), the MAC does not match (400 mac_mismatch).
var (
	ErrAuthentication = errors.New("sidecarclient: message authentication failed")
	ErrMACMismatch    = errors.New("sidecarclient: MAC does not match")
)

// SecretKey is an AES or HMAC key of a partition served by the sidecar (docs/encryption.md); every call
// is one request, which the sidecar routes to a device.
type SecretKey struct {
	c         *Client
	partition string
	info      sidecarapi.SecretKeyInfo
}

// SecretKeys lists the partition's secret keys.
func (c *Client) SecretKeys(ctx context.Context, partition string) ([]sidecarapi.SecretKeyInfo, error) {
	var out sidecarapi.SecretKeyList
	if err := c.do(ctx, http.MethodGet, "/v1/partitions/"+url.PathEscape(partition)+"/secret-keys", nil, &out); err != nil {
		return nil, err
	}
	return out.Keys, nil
}

// SecretKey fetches a secret key's description.
func (c *Client) SecretKey(ctx context.Context, partition, label string) (*SecretKey, error) {
	k := &SecretKey{c: c, partition: partition}
	if err := c.do(ctx, http.MethodGet, secretPath(partition, label), nil, &k.info); err != nil {
		return nil, err
	}
	return k, nil
}

func secretPath(partition, label string) string {
	return "/v1/partitions/" + url.PathEscape(partition) + "/secret-keys/" + url.PathEscape(label)
}

// Info returns the key as the sidecar described it when the SecretKey was fetched.
func (k *SecretKey) Info() sidecarapi.SecretKeyInfo { return k.info }

func (k *SecretKey) path(op string) string { return secretPath(k.partition, k.info.Label) + "/" + op }

// Seal encrypts plaintext with AES-GCM on a device: nonce ‖ ciphertext ‖ tag, and the device's name.
func (k *SecretKey) Seal(ctx context.Context, plaintext, aad []byte) ([]byte, string, error) {
	var resp sidecarapi.EncryptResponse
	req := sidecarapi.EncryptRequest{Plaintext: b64(plaintext), AAD: b64(aad)}
	if err := k.c.do(ctx, http.MethodPost, k.path("encrypt"), req, &resp); err != nil {
		return nil, "", err
	}
	ct, err := unb64("ciphertext", resp.Ciphertext)
	return ct, resp.Device, err
}

// Open decrypts what Seal returned with the same aad; input that does not authenticate matches
// ErrAuthentication.
func (k *SecretKey) Open(ctx context.Context, sealed, aad []byte) ([]byte, string, error) {
	var resp sidecarapi.SecretDecryptResponse
	req := sidecarapi.SecretDecryptRequest{Ciphertext: b64(sealed), AAD: b64(aad)}
	if err := k.c.do(ctx, http.MethodPost, k.path("decrypt"), req, &resp); err != nil {
		return nil, "", authErr(err)
	}
	pt, err := unb64("plaintext", resp.Plaintext)
	return pt, resp.Device, err
}

// MAC returns the HMAC of data with hash h (0: the key's own hash), and the device's name.
func (k *SecretKey) MAC(ctx context.Context, h crypto.Hash, data []byte) ([]byte, string, error) {
	alg, err := macAlgorithm(h)
	if err != nil {
		return nil, "", err
	}
	var resp sidecarapi.MACResponse
	if err := k.c.do(ctx, http.MethodPost, k.path("mac"), sidecarapi.MACRequest{Data: b64(data), Algorithm: alg}, &resp); err != nil {
		return nil, "", err
	}
	mac, err := unb64("mac", resp.MAC)
	return mac, resp.Device, err
}

// VerifyMAC checks mac against data with hash h (0: the key's own); a mismatch matches ErrMACMismatch.
func (k *SecretKey) VerifyMAC(ctx context.Context, h crypto.Hash, data, mac []byte) error {
	alg, err := macAlgorithm(h)
	if err != nil {
		return err
	}
	var resp sidecarapi.VerifyMACResponse
	req := sidecarapi.VerifyMACRequest{Data: b64(data), MAC: b64(mac), Algorithm: alg}
	if err := k.c.do(ctx, http.MethodPost, k.path("verify-mac"), req, &resp); err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.Code == sidecarapi.CodeMACMismatch {
			return fmt.Errorf("%w: %w", ErrMACMismatch, err)
		}
		return err
	}
	if !resp.Valid {
		return ErrMACMismatch
	}
	return nil
}

func macAlgorithm(h crypto.Hash) (string, error) {
	switch h {
	case 0:
		return "", nil
	case crypto.SHA256:
		return sidecarapi.AlgHMACSHA256, nil
	case crypto.SHA384:
		return sidecarapi.AlgHMACSHA384, nil
	case crypto.SHA512:
		return sidecarapi.AlgHMACSHA512, nil
	}
	return "", fmt.Errorf("sidecarclient: no HMAC with %v", h)
}

func authErr(err error) error {
	var ae *APIError
	if errors.As(err, &ae) && ae.Code == sidecarapi.CodeDecryptionFailed {
		return fmt.Errorf("%w: %w", ErrAuthentication, err)
	}
	return err
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func unb64(field, s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("sidecarclient: %s in the answer: %w", field, err)
	}
	return b, nil
}
