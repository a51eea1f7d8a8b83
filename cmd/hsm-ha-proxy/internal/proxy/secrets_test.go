package proxy

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// fakeSecret is a secretHandle backed by Go's AES-GCM and HMAC (the HTTP layer's tests need no HSM).
type fakeSecret struct {
	info pkcs11ha.SecretKeyInfo
	key  []byte
}

func (k *fakeSecret) Info() pkcs11ha.SecretKeyInfo { return k.info }

func (k *fakeSecret) gcm() cipher.AEAD {
	b, _ := aes.NewCipher(k.key)
	g, _ := cipher.NewGCM(b)
	return g
}

func (k *fakeSecret) SealDevice(_ context.Context, pt, aad []byte) ([]byte, string, error) {
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	return k.gcm().Seal(nonce, nonce, pt, aad), "fake-1", nil
}

func (k *fakeSecret) OpenDevice(_ context.Context, sealed, aad []byte) ([]byte, string, error) {
	if len(sealed) < 28 {
		return nil, "", fmt.Errorf("%w: short", pkcs11ha.ErrAuthentication)
	}
	pt, err := k.gcm().Open(nil, sealed[:12], sealed[12:], aad)
	if err != nil {
		return nil, "fake-1", fmt.Errorf("%w: %v", pkcs11ha.ErrAuthentication, err)
	}
	return pt, "fake-1", nil
}

func (k *fakeSecret) MACDevice(_ context.Context, h crypto.Hash, data []byte) ([]byte, string, error) {
	if h == 0 {
		h = crypto.SHA256
	}
	m := hmac.New(h.New, k.key)
	m.Write(data)
	return m.Sum(nil), "fake-1", nil
}

func (k *fakeSecret) VerifyMACDevice(ctx context.Context, h crypto.Hash, data, mac []byte) (string, error) {
	want, dev, _ := k.MACDevice(ctx, h, data)
	if !hmac.Equal(want, mac) {
		return dev, fmt.Errorf("%w", pkcs11ha.ErrMACMismatch)
	}
	return dev, nil
}

func secretBody(fields ...string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(fields); i += 2 {
		m[fields[i]] = fields[i+1]
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func enc(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestSecretAPIWithoutHSM: the secret-key endpoints' routing, grants, answer shapes and error codes.
func TestSecretAPIWithoutHSM(t *testing.T) {
	be := newFakeBackend(t)
	ts := startUnix(t, fakeConfig(me("payments")), be)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	fs := &fakeSecret{info: pkcs11ha.SecretKeyInfo{Label: "aes-key", ID: "10", Algorithm: "AES_256", CheckValue: "0011223344556677"}, key: key}
	sealed, _, _ := fs.SealDevice(context.Background(), []byte("dek"), []byte("aad"))
	mac, _, _ := fs.MACDevice(context.Background(), crypto.SHA384, []byte("data"))
	const base = "/v1/partitions/payments/secret-keys/aes-key"
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
		fields                   []string
	}{
		{"list", "GET", "/v1/partitions/payments/secret-keys", "", 200, "", []string{"keys"}},
		{"get", "GET", base, "", 200, "", []string{"label", "id", "algorithm", "check_value", "devices"}},
		{"encrypt", "POST", base + "/encrypt", secretBody("plaintext", enc([]byte("dek")), "aad", enc([]byte("aad"))), 200, "", []string{"ciphertext", "device"}},
		{"encrypt nothing", "POST", base + "/encrypt", secretBody("plaintext", ""), 200, "", []string{"ciphertext", "device"}},
		{"decrypt", "POST", base + "/decrypt", secretBody("ciphertext", enc(sealed), "aad", enc([]byte("aad"))), 200, "", []string{"plaintext", "device"}},
		{"decrypt, wrong aad", "POST", base + "/decrypt", secretBody("ciphertext", enc(sealed), "aad", enc([]byte("aae"))), 400, sidecarapi.CodeDecryptionFailed, nil},
		{"decrypt, truncated", "POST", base + "/decrypt", secretBody("ciphertext", enc(sealed[:20])), 400, sidecarapi.CodeDecryptionFailed, nil},
		{"mac", "POST", base + "/mac", secretBody("data", enc([]byte("data"))), 200, "", []string{"mac", "device"}},
		{"verify-mac", "POST", base + "/verify-mac", secretBody("data", enc([]byte("data")), "mac", enc(mac), "algorithm", "HMAC_SHA384"), 200, "", []string{"valid", "device"}},
		{"verify-mac, mismatch", "POST", base + "/verify-mac", secretBody("data", enc([]byte("datb")), "mac", enc(mac), "algorithm", "HMAC_SHA384"), 400, sidecarapi.CodeMACMismatch, nil},
		{"mac, unknown algorithm", "POST", base + "/mac", secretBody("data", "", "algorithm", "HMAC_MD5"), 400, sidecarapi.CodeUnknownAlgorithm, nil},
		{"encrypt, missing plaintext", "POST", base + "/encrypt", `{"aad":""}`, 400, sidecarapi.CodeInvalidRequest, nil},
		{"encrypt, bad base64", "POST", base + "/encrypt", secretBody("plaintext", "!!"), 400, sidecarapi.CodeInvalidRequest, nil},
		{"encrypt, unknown field", "POST", base + "/encrypt", `{"plaintext":"","iv":""}`, 400, sidecarapi.CodeMalformedJSON, nil},
		{"not granted", "POST", "/v1/partitions/ledger/secret-keys/aes-key/encrypt", secretBody("plaintext", ""), 403, sidecarapi.CodeForbidden, nil},
		{"unknown secret key", "POST", "/v1/partitions/payments/secret-keys/nope/mac", secretBody("data", ""), 404, sidecarapi.CodeUnknownKey, nil},
		{"GET on encrypt", "GET", base + "/encrypt", "", 405, sidecarapi.CodeMethodNotAllowed, nil},
	}
	be.secrets = map[string]*fakeSecret{"payments/aes-key": fs, "ledger/aes-key": fs}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := ts.call(t, tt.method, tt.path, tt.body)
			require.Equal(t, tt.status, status, "body: %s", body)
			if tt.code != "" {
				code, _ := apiErr(t, body)
				assert.Equal(t, tt.code, code)
				return
			}
			fields(t, body, tt.fields...)
		})
	}
	// What encrypt returned, Go's AES-GCM opens.
	_, body := ts.call(t, "POST", base+"/encrypt", secretBody("plaintext", enc([]byte("dek")), "aad", enc([]byte("x"))))
	var er sidecarapi.EncryptResponse
	require.NoError(t, json.Unmarshal([]byte(body), &er))
	ct, err := base64.StdEncoding.DecodeString(er.Ciphertext)
	require.NoError(t, err)
	pt, err := fs.gcm().Open(nil, ct[:12], ct[12:], []byte("x"))
	require.NoError(t, err)
	require.Equal(t, "dek", string(pt))
}
