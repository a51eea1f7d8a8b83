package sidecarclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

type keys = softhsmtest.SoftKeys

// getKeys returns software keys for tests that need no HSM (generated once per process).
func getKeys(t testing.TB) keys { return harnesstest.SoftKeys(t) }

func TestSignAlgorithm(t *testing.T) {
	k := getKeys(t)
	rsaPub, ecPub, edPub := k.RSA.Public(), k.EC.Public(), k.Ed.Public()
	tests := []struct {
		name    string
		pub     crypto.PublicKey
		opts    crypto.SignerOpts
		want    string
		wantErr string
	}{
		{"rsa sha256", rsaPub, crypto.SHA256, sidecarapi.AlgRSAPKCS1SHA256, ""},
		{"rsa sha384", rsaPub, crypto.SHA384, sidecarapi.AlgRSAPKCS1SHA384, ""},
		{"rsa sha512", rsaPub, crypto.SHA512, sidecarapi.AlgRSAPKCS1SHA512, ""},
		{"rsa sha1", rsaPub, crypto.SHA1, "", "not supported"},
		{"rsa raw", rsaPub, crypto.Hash(0), "", "not supported"},
		{"pss equals hash", rsaPub, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, sidecarapi.AlgRSAPSSSHA256, ""},
		{"pss salt 48 with sha384", rsaPub, &rsa.PSSOptions{SaltLength: 48, Hash: crypto.SHA384}, sidecarapi.AlgRSAPSSSHA384, ""},
		{"pss sha512", rsaPub, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512}, sidecarapi.AlgRSAPSSSHA512, ""},
		{"pss auto salt", rsaPub, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}, "", "salt length"},
		{"pss salt 20 with sha256", rsaPub, &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256}, "", "salt length"},
		{"pss sha1", rsaPub, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA1}, "", "not supported"},
		{"ecdsa sha256", ecPub, crypto.SHA256, sidecarapi.AlgECDSASHA256, ""},
		{"ecdsa sha384", ecPub, crypto.SHA384, sidecarapi.AlgECDSASHA384, ""},
		{"ecdsa sha512", ecPub, crypto.SHA512, sidecarapi.AlgECDSASHA512, ""},
		{"ecdsa sha224", ecPub, crypto.SHA224, "", "not supported"},
		{"ecdsa with pss", ecPub, &rsa.PSSOptions{Hash: crypto.SHA256}, "", "RSA-PSS"},
		{"ed25519", edPub, crypto.Hash(0), sidecarapi.AlgEd25519, ""},
		{"ed25519 options", edPub, &ed25519.Options{}, sidecarapi.AlgEd25519, ""},
		{"ed25519ph", edPub, &ed25519.Options{Hash: crypto.SHA512}, "", "pure Ed25519"},
		{"ed25519 context", edPub, &ed25519.Options{Context: "x"}, "", "pure Ed25519"},
		{"ed25519 with a hash", edPub, crypto.SHA256, "", "message itself"},
		{"nil opts", ecPub, nil, "", "nil SignerOpts"},
		{"unknown key", "not a key", crypto.SHA256, "", "unsupported public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SignAlgorithm(tt.pub, tt.opts)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestDecryptAlgorithm(t *testing.T) {
	k := getKeys(t)
	tests := []struct {
		name    string
		pub     crypto.PublicKey
		opts    crypto.DecrypterOpts
		want    string
		wantErr string
	}{
		{"nil is PKCS#1 v1.5", k.RSA.Public(), nil, sidecarapi.AlgRSAPKCS1, ""},
		{"PKCS#1 v1.5", k.RSA.Public(), &rsa.PKCS1v15DecryptOptions{}, sidecarapi.AlgRSAPKCS1, ""},
		{"PKCS#1 v1.5 session key", k.RSA.Public(), &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 16}, sidecarapi.AlgRSAPKCS1, ""},
		{"OAEP SHA-1", k.RSA.Public(), &rsa.OAEPOptions{Hash: crypto.SHA1}, sidecarapi.AlgRSAOAEPSHA1, ""},
		{"OAEP SHA-256", k.RSA.Public(), &rsa.OAEPOptions{Hash: crypto.SHA256}, sidecarapi.AlgRSAOAEPSHA256, ""},
		{"OAEP SHA-256 explicit MGF", k.RSA.Public(), &rsa.OAEPOptions{Hash: crypto.SHA256, MGFHash: crypto.SHA256}, sidecarapi.AlgRSAOAEPSHA256, ""},
		{"OAEP mixed MGF", k.RSA.Public(), &rsa.OAEPOptions{Hash: crypto.SHA256, MGFHash: crypto.SHA1}, "", "MGF1"},
		{"OAEP label", k.RSA.Public(), &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("l")}, "", "label"},
		{"OAEP SHA-512", k.RSA.Public(), &rsa.OAEPOptions{Hash: crypto.SHA512}, "", "not supported"},
		{"EC key", k.EC.Public(), nil, "", "not RSA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecryptAlgorithm(tt.pub, tt.opts)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// fakeSidecar is a minimal stand-in for the sidecar: it records the requests and answers with the
// test's software keys, or with a canned error.
type fakeSidecar struct {
	t      *testing.T
	keys   keys
	mu     sync.Mutex
	bodies []map[string]string
	paths  []string
	fail   atomic.Pointer[cannedError]
	// intercept, when set, sees every request first; true means it has answered (or dropped) it.
	intercept func(w http.ResponseWriter, r *http.Request) bool
}

type cannedError struct {
	status int
	body   string
}

func (f *fakeSidecar) handler() http.Handler {
	mux := http.NewServeMux()
	pemOf := func(pub crypto.PublicKey) string {
		der, _ := x509.MarshalPKIXPublicKey(pub)
		return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	signer := func(label string) crypto.Signer {
		switch label {
		case "ec-key", "weird/label key":
			return f.keys.EC
		case "ed-key":
			return f.keys.Ed
		}
		return f.keys.RSA
	}
	record := func(r *http.Request) map[string]string {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.paths = append(f.paths, r.PathValue("p")+"|"+r.PathValue("label"))
		var m map[string]string
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			require.NoError(f.t, json.Unmarshal(b, &m))
			f.bodies = append(f.bodies, m)
		}
		return m
	}
	write := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if fe := f.fail.Load(); fe != nil {
			w.WriteHeader(fe.status)
			_, _ = io.WriteString(w, fe.body)
			return
		}
		http.NotFound(w, r)
	})
	mux.HandleFunc("GET /v1/partitions/{p}/keys/{label}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		l := r.PathValue("label")
		write(w, sidecarapi.KeyInfo{Label: l, ID: "02", Algorithm: "X", PublicKey: pemOf(signer(l).Public()), Devices: []string{"d1"}})
	})
	mux.HandleFunc("POST /v1/partitions/{p}/keys/{label}/sign", func(w http.ResponseWriter, r *http.Request) {
		m := record(r)
		s := signer(r.PathValue("label"))
		var in []byte
		var opts crypto.SignerOpts
		switch m["algorithm"] {
		case sidecarapi.AlgEd25519:
			in, _ = base64.StdEncoding.DecodeString(m["message"])
			opts = crypto.Hash(0)
		case sidecarapi.AlgRSAPSSSHA256:
			in, _ = base64.StdEncoding.DecodeString(m["digest"])
			opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		default:
			in, _ = base64.StdEncoding.DecodeString(m["digest"])
			opts = crypto.SHA256
		}
		sig, err := s.Sign(rand.Reader, in, opts)
		require.NoError(f.t, err)
		write(w, map[string]string{"signature": base64.StdEncoding.EncodeToString(sig), "device": "d1"})
	})
	mux.HandleFunc("POST /v1/partitions/{p}/keys/{label}/decrypt", func(w http.ResponseWriter, r *http.Request) {
		m := record(r)
		ct, _ := base64.StdEncoding.DecodeString(m["ciphertext"])
		var opts crypto.DecrypterOpts
		if m["algorithm"] == sidecarapi.AlgRSAOAEPSHA256 {
			opts = &rsa.OAEPOptions{Hash: crypto.SHA256}
		}
		pt, err := f.keys.RSA.Decrypt(rand.Reader, ct, opts)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			write(w, map[string]any{"error": map[string]string{"code": sidecarapi.CodeDecryptionFailed, "message": "decryption failed"}})
			return
		}
		write(w, map[string]string{"plaintext": base64.StdEncoding.EncodeToString(pt)})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.intercept != nil && f.intercept(w, r) {
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// startFake serves a fakeSidecar on a unix socket and returns a client of it.
func startFake(t *testing.T) (*fakeSidecar, *Client) {
	f := &fakeSidecar{t: t, keys: getKeys(t)}
	dir, err := os.MkdirTemp("", "sc")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(f.handler())
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	c := Dial("unix://" + sock)
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestKeySignAndDecryptWire(t *testing.T) {
	f, c := startFake(t)
	ctx := context.Background()
	k := getKeys(t)

	ec, err := c.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	assert.True(t, k.EC.PublicKey.Equal(ec.Public()))
	assert.Equal(t, "ec-key", ec.Label())
	assert.Equal(t, "payments", ec.Partition())
	assert.Equal(t, []string{"d1"}, ec.Info().Devices)
	d := sha256.Sum256([]byte("m"))
	sig, dev, err := ec.SignDevice(ctx, d[:], crypto.SHA256)
	require.NoError(t, err)
	assert.Equal(t, "d1", dev)
	assert.True(t, ecdsa.VerifyASN1(&k.EC.PublicKey, d[:], sig))
	_, err = ec.Sign(rand.Reader, d[:20], crypto.SHA256)
	require.ErrorContains(t, err, "digest has 20 bytes")

	ed, err := c.Key(ctx, "payments", "ed-key")
	require.NoError(t, err)
	sig, err = ed.Sign(nil, []byte("the message"), crypto.Hash(0))
	require.NoError(t, err)
	assert.True(t, ed25519.Verify(k.Ed.Public().(ed25519.PublicKey), []byte("the message"), sig))

	rk, err := c.Key(ctx, "ledger", "rsa-key")
	require.NoError(t, err)
	sig, err = rk.SignContext(ctx, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	require.NoError(t, err)
	require.NoError(t, rsa.VerifyPSS(&k.RSA.PublicKey, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: 32}))
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &k.RSA.PublicKey, []byte("pt"), nil)
	require.NoError(t, err)
	pt, err := rk.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256})
	require.NoError(t, err)
	assert.Equal(t, []byte("pt"), pt)

	f.mu.Lock()
	bodies := f.bodies
	f.mu.Unlock()
	require.Len(t, bodies, 4)
	assert.Equal(t, map[string]string{"digest": base64.StdEncoding.EncodeToString(d[:]), "algorithm": sidecarapi.AlgECDSASHA256}, bodies[0])
	assert.Equal(t, map[string]string{"message": base64.StdEncoding.EncodeToString([]byte("the message")), "algorithm": sidecarapi.AlgEd25519}, bodies[1])
	assert.Equal(t, sidecarapi.AlgRSAPSSSHA256, bodies[2]["algorithm"])
	assert.Equal(t, map[string]string{"ciphertext": base64.StdEncoding.EncodeToString(ct), "algorithm": sidecarapi.AlgRSAOAEPSHA256}, bodies[3])
}

func TestPathEscaping(t *testing.T) {
	f, c := startFake(t)
	_, err := c.Key(context.Background(), "pay ments", "weird/label key")
	require.NoError(t, err)
	f.mu.Lock()
	defer f.mu.Unlock()
	assert.Equal(t, []string{"pay ments|weird/label key"}, f.paths)
}

func TestErrors(t *testing.T) {
	f, c := startFake(t)
	ctx := context.Background()
	rk, err := c.Key(ctx, "ledger", "rsa-key")
	require.NoError(t, err)

	t.Run("refused decryption matches rsa.ErrDecryption", func(t *testing.T) {
		_, err := rk.DecryptContext(ctx, make([]byte, 256), nil)
		require.ErrorIs(t, err, rsa.ErrDecryption)
		var ae *APIError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, 400, ae.StatusCode)
		assert.Equal(t, sidecarapi.CodeDecryptionFailed, ae.Code)
	})
	t.Run("session key length hides a refused decryption", func(t *testing.T) {
		key, err := rk.Decrypt(rand.Reader, make([]byte, 256), &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 16})
		require.NoError(t, err)
		assert.Len(t, key, 16)
		key, err = rk.DecryptContext(ctx, make([]byte, 256), &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 16})
		require.NoError(t, err, "DecryptContext applies the same rule")
		assert.Len(t, key, 16)
	})
	tests := []struct {
		name, body string
		status     int
		code       string
		is         error
	}{
		{"API error", `{"error":{"code":"unknown_key","message":"no such key"}}`, 404, sidecarapi.CodeUnknownKey, nil},
		{"deadline", `{"error":{"code":"deadline_exceeded","message":"late"}}`, 504, sidecarapi.CodeDeadlineExceeded, context.DeadlineExceeded},
		{"not an API body", `<html>bad gateway</html>`, 502, "http_502", nil},
		{"empty body", ``, 503, "http_503", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.fail.Store(&cannedError{tt.status, tt.body})
			defer f.fail.Store(nil)
			_, err := c.Status(ctx)
			var ae *APIError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, tt.status, ae.StatusCode)
			assert.Equal(t, tt.code, ae.Code)
			assert.NotEmpty(t, ae.Message)
			assert.Contains(t, ae.Error(), tt.code)
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
			assert.False(t, errors.Is(err, rsa.ErrDecryption))
		})
	}
	t.Run("a transport failure is not an APIError", func(t *testing.T) {
		var ae *APIError
		_, err := Dial("/nonexistent/socket").Key(ctx, "p", "x")
		require.Error(t, err)
		assert.False(t, errors.As(err, &ae))
	})
}

func TestParsePublicPEM(t *testing.T) {
	_, err := parsePublicPEM("not pem")
	require.Error(t, err)
	_, err = parsePublicPEM(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})))
	require.Error(t, err)
	_, err = parsePublicPEM(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})))
	require.Error(t, err)
}

// TestRetryOnClosedIdleConnection: a kept-alive connection the server closes when a sign request arrives on
// it, before any byte of a response (a sidecar shutting down or upgrading closes idle TLS connections so),
// costs the caller nothing: the request is sent again on a new connection, and only sign and decrypt are
// marked safe to send again.
func TestRetryOnClosedIdleConnection(t *testing.T) {
	f, c := startFake(t)
	ctx := context.Background()
	k := getKeys(t)
	key, err := c.Key(ctx, "payments", "ec-key") // opens the connection that is kept alive
	require.NoError(t, err)
	var dropped atomic.Int32
	var keys sync.Map
	f.intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost {
			keys.Store(r.Header.Get("Idempotency-Key"), true)
		}
		if r.Method != http.MethodPost || !dropped.CompareAndSwap(0, 1) {
			return false
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		require.NoError(t, err)
		conn.Close()
		return true
	}
	d := sha256.Sum256([]byte("retried"))
	sig, err := key.SignContext(ctx, d[:], crypto.SHA256)
	require.NoError(t, err, "the request is sent again")
	assert.True(t, ecdsa.VerifyASN1(k.EC.Public().(*ecdsa.PublicKey), d[:], sig))
	assert.Equal(t, int32(1), dropped.Load())
	n := 0
	keys.Range(func(key, _ any) bool {
		n++
		assert.Len(t, key, 32)
		return true
	})
	assert.Equal(t, 1, n, "both attempts carry the same Idempotency-Key")
}
