package sidecarclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// DefaultTimeout bounds Sign and Decrypt calls made without a context (the crypto.Signer and
// crypto.Decrypter methods); the sidecar applies its own policy.request_timeout (5 s by default) as well.
const DefaultTimeout = 10 * time.Second

// maxResponse caps how much of a response body is read.
const maxResponse = 4 << 20

// Client talks to one hsm-ha-proxy sidecar. It is safe for concurrent use; connections are kept alive.
type Client struct {
	hc   *http.Client
	base string // scheme and authority requests are sent to

	// Timeout bounds Sign and Decrypt (the methods without a context). Zero means DefaultTimeout.
	Timeout time.Duration
}

// Dial returns a client of the sidecar listening on the unix socket socketPath (a plain path, or
// "unix://PATH"). It does not connect yet: the first request does.
func Dial(socketPath string) *Client {
	path := strings.TrimPrefix(socketPath, "unix://")
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: "http://hsm-ha-proxy"}
}

// DialTLS returns a client of the sidecar listening on addr ("https://host:port" or "host:port") with
// mutual TLS: tlsCfg must carry the client certificate (Certificates or GetClientCertificate) and the
// CA that signed the sidecar's certificate (RootCAs).
func DialTLS(addr string, tlsCfg *tls.Config) *Client {
	base := strings.TrimSuffix(addr, "/")
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	var tc *tls.Config
	if tlsCfg != nil {
		tc = tlsCfg.Clone()
	}
	tr := &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     tc,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: base}
}

// Close releases idle connections. In-flight calls are not interrupted.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// Keys lists the keys of a partition.
func (c *Client) Keys(ctx context.Context, partition string) ([]sidecarapi.KeyInfo, error) {
	var out sidecarapi.KeyList
	if err := c.do(ctx, http.MethodGet, "/v1/partitions/"+url.PathEscape(partition)+"/keys", nil, &out); err != nil {
		return nil, err
	}
	return out.Keys, nil
}

// Key fetches a key of a partition and parses its public key. The returned *Key signs and decrypts
// through the sidecar.
func (c *Client) Key(ctx context.Context, partition, label string) (*Key, error) {
	var info sidecarapi.KeyInfo
	if err := c.do(ctx, http.MethodGet, keyPath(partition, label), nil, &info); err != nil {
		return nil, err
	}
	pub, err := parsePublicPEM(info.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("sidecarclient: key %q of partition %q: %w", label, partition, err)
	}
	return &Key{c: c, partition: partition, info: info, pub: pub}, nil
}

// KeyWithPublic returns a Key for (partition, label) without asking the sidecar, for applications that
// pin the public key (from a certificate, say) and want no extra round trip. pub must be the key's
// *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey: it selects the algorithm names, and a wrong one
// makes signatures that do not verify (or requests the sidecar refuses). Info holds the label only.
func (c *Client) KeyWithPublic(partition, label string, pub crypto.PublicKey) *Key {
	return &Key{c: c, partition: partition, info: sidecarapi.KeyInfo{Label: label}, pub: pub}
}

// Status returns the sidecar's device table (GET /v1/status).
func (c *Client) Status(ctx context.Context) (*sidecarapi.Status, error) {
	var st sidecarapi.Status
	if err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Ready reports whether every partition has an up device holding all its keys (GET /readyz). A sidecar
// that answers "not ready" gives (false, nil); a failure to ask gives an error.
func (c *Client) Ready(ctx context.Context) (bool, error) {
	err := c.do(ctx, http.MethodGet, "/readyz", nil, nil)
	var ae *APIError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ae) && ae.StatusCode == http.StatusServiceUnavailable:
		return false, nil
	}
	return false, err
}

// Live reports whether the sidecar process answers (GET /healthz), whatever the state of its devices.
func (c *Client) Live(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}

func keyPath(partition, label string) string {
	return "/v1/partitions/" + url.PathEscape(partition) + "/keys/" + url.PathEscape(label)
}

// do sends one request with an optional JSON body and decodes a 2xx JSON answer into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("sidecarclient: encoding request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("sidecarclient: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if method == http.MethodPost {
		// Sign and decrypt (the API's only POSTs) change nothing, so sending one again is safe. With this
		// header net/http's Transport does so, on a new connection, when a kept-alive connection is closed
		// before any byte of the response: what a sidecar's shutdown or hot upgrade does to an idle TLS
		// connection at the moment a request is written on it (docs/upgrades.md).
		req.Header.Set("Idempotency-Key", idempotencyKey())
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("sidecarclient: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("sidecarclient: %s %s: reading response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return apiError(resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("sidecarclient: %s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// idempotencyKey names one request (a random 128-bit hex string).
func idempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// apiError decodes the API's error body, or describes a body that is not one.
func apiError(status int, b []byte) error {
	var eb sidecarapi.ErrorBody
	if err := json.Unmarshal(b, &eb); err == nil && eb.Error.Code != "" {
		return &APIError{StatusCode: status, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 256 {
		msg = msg[:256] + "..."
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &APIError{StatusCode: status, Code: fmt.Sprintf("http_%d", status), Message: msg}
}
