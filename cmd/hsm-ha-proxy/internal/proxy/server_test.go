package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

func me(partitions ...string) sidecarconfig.ClientConfig {
	return sidecarconfig.ClientConfig{Name: "me", UnixUID: intp(os.Getuid()), Partitions: partitions}
}

func signBody(digest []byte, alg string) string {
	return fmt.Sprintf(`{"digest":%q,"algorithm":%q}`, base64.StdEncoding.EncodeToString(digest), alg)
}

// TestAPIWithoutHSM covers routing, the answer shapes and the error codes decided by the HTTP layer,
// on a unix socket with a software backend.
func TestAPIWithoutHSM(t *testing.T) {
	be := newFakeBackend(t)
	ts := startUnix(t, fakeConfig(me("payments")), be)
	digest := sha256.Sum256([]byte("hello"))
	big := strings.Repeat("A", MaxBodyBytes+1)
	k := testKeys(t)

	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string   // error code, for errors
		fields                   []string // answer members, for successes
	}{
		{"list keys", "GET", "/v1/partitions/payments/keys", "", 200, "", []string{"keys"}},
		{"get key", "GET", "/v1/partitions/payments/keys/ec-key", "", 200, "", []string{"label", "id", "algorithm", "public_key", "devices"}},
		{"sign", "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"), 200, "", []string{"signature", "device"}},
		{"status", "GET", "/v1/status", "", 200, "", []string{"ready", "devices"}},
		{"healthz", "GET", "/healthz", "", 200, "", []string{"status"}},
		{"readyz", "GET", "/readyz", "", 200, "", []string{"ready"}},
		{"head healthz", "HEAD", "/healthz", "", 200, "", nil},

		{"partition not granted", "GET", "/v1/partitions/ledger/keys", "", 403, sidecarapi.CodeForbidden, nil},
		{"sign in a partition not granted", "POST", "/v1/partitions/ledger/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"), 403, sidecarapi.CodeForbidden, nil},
		{"unknown partition", "GET", "/v1/partitions/nope/keys", "", 404, sidecarapi.CodeUnknownPartition, nil},
		{"unknown key", "GET", "/v1/partitions/payments/keys/nope", "", 404, sidecarapi.CodeUnknownKey, nil},
		{"sign with an unknown key", "POST", "/v1/partitions/payments/keys/nope/sign", signBody(digest[:], "ECDSA_SHA256"), 404, sidecarapi.CodeUnknownKey, nil},
		{"unknown endpoint", "GET", "/v2/partitions", "", 404, sidecarapi.CodeNotFound, nil},
		{"trailing slash", "GET", "/v1/partitions/payments/keys/", "", 404, sidecarapi.CodeNotFound, nil},
		{"GET on sign", "GET", "/v1/partitions/payments/keys/ec-key/sign", "", 405, sidecarapi.CodeMethodNotAllowed, nil},
		{"POST on a key", "POST", "/v1/partitions/payments/keys/ec-key", "{}", 405, sidecarapi.CodeMethodNotAllowed, nil},
		{"DELETE on status", "DELETE", "/v1/status", "", 405, sidecarapi.CodeMethodNotAllowed, nil},
		{"malformed json", "POST", "/v1/partitions/payments/keys/ec-key/sign", `{"digest":`, 400, sidecarapi.CodeMalformedJSON, nil},
		{"unknown algorithm", "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA1"), 400, sidecarapi.CodeUnknownAlgorithm, nil},
		{"wrong digest length", "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:20], "ECDSA_SHA256"), 400, sidecarapi.CodeBadDigestLength, nil},
		{"missing digest", "POST", "/v1/partitions/payments/keys/ec-key/sign", `{"algorithm":"ECDSA_SHA256"}`, 400, sidecarapi.CodeInvalidRequest, nil},
		{"algorithm for another key type", "POST", "/v1/partitions/payments/keys/rsa-key/sign", signBody(digest[:], "ECDSA_SHA256"), 400, sidecarapi.CodeAlgorithmKeyMismatch, nil},
		{"decrypt with an EC key", "POST", "/v1/partitions/payments/keys/ec-key/decrypt", `{"ciphertext":"AAAA","algorithm":"RSA_PKCS1"}`, 400, sidecarapi.CodeAlgorithmKeyMismatch, nil},
		{"short ciphertext", "POST", "/v1/partitions/payments/keys/rsa-key/decrypt", `{"ciphertext":"AAAA","algorithm":"RSA_PKCS1"}`, 400, sidecarapi.CodeBadCiphertextLength, nil},
		{"refused ciphertext", "POST", "/v1/partitions/payments/keys/rsa-key/decrypt", `{"ciphertext":"` + b64(256) + `","algorithm":"RSA_OAEP_SHA256"}`, 400, sidecarapi.CodeDecryptionFailed, nil},
		{"body over 1 MiB", "POST", "/v1/partitions/payments/keys/ec-key/sign", big, 413, sidecarapi.CodeBodyTooLarge, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := ts.call(t, tt.method, tt.path, tt.body)
			require.Equal(t, tt.status, status, "body: %s", body)
			if tt.method == "HEAD" {
				return
			}
			if tt.code != "" {
				code, _ := apiErr(t, body)
				assert.Equal(t, tt.code, code)
				return
			}
			fields(t, body, tt.fields...)
		})
	}

	t.Run("405 names the allowed methods", func(t *testing.T) {
		req, _ := http.NewRequest("GET", ts.base+"/v1/partitions/payments/keys/ec-key/sign", nil)
		resp, err := ts.hc.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, "POST", resp.Header.Get("Allow"))
	})
	t.Run("chunked body over 1 MiB", func(t *testing.T) {
		req, _ := http.NewRequest("POST", ts.base+"/v1/partitions/payments/keys/ec-key/sign",
			io.MultiReader(strings.NewReader(`{"digest":"`), strings.NewReader(big), strings.NewReader(`"}`)))
		require.EqualValues(t, 0, req.ContentLength) // unknown length: sent chunked
		resp, err := ts.hc.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 413, resp.StatusCode)
		code, _ := apiErr(t, b)
		assert.Equal(t, sidecarapi.CodeBodyTooLarge, code)
	})
	t.Run("signature verifies", func(t *testing.T) {
		status, body := ts.call(t, "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"))
		require.Equal(t, 200, status)
		m := fields(t, body, "signature", "device")
		sig, err := base64.StdEncoding.DecodeString(str(t, m["signature"]))
		require.NoError(t, err)
		assert.True(t, ecdsa.VerifyASN1(&k.EC.PublicKey, digest[:], sig))
		assert.Equal(t, "fake-1", str(t, m["device"]))
	})
	t.Run("decrypt", func(t *testing.T) {
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &k.RSA.PublicKey, []byte("secret"), nil)
		require.NoError(t, err)
		status, body := ts.call(t, "POST", "/v1/partitions/payments/keys/rsa-key/decrypt",
			fmt.Sprintf(`{"ciphertext":%q,"algorithm":"RSA_OAEP_SHA256"}`, base64.StdEncoding.EncodeToString(ct)))
		require.Equal(t, 200, status, "body: %s", body)
		m := fields(t, body, "plaintext")
		assert.Equal(t, base64.StdEncoding.EncodeToString([]byte("secret")), str(t, m["plaintext"]))
	})
	t.Run("metrics", func(t *testing.T) {
		status, body := ts.call(t, "GET", "/metrics", "")
		require.Equal(t, 200, status)
		assert.Contains(t, string(body), `hsm_ha_proxy_http_requests_total{code="403",method="GET",route="GET /v1/partitions/{p}/keys"}`)
		assert.Contains(t, string(body), `hsm_ha_proxy_api_outcomes_total{operation="sign",outcome="bad_digest_length"} 1`)
		assert.Contains(t, string(body), "hsm_ha_proxy_http_in_flight_requests")
	})
}

// TestLibraryErrorsOverHTTP: errors of the library become the API's 503, 504, 400 and 500 answers.
func TestLibraryErrorsOverHTTP(t *testing.T) {
	be := newFakeBackend(t)
	cfg := fakeConfig(me("payments"))
	cfg.Policy.RequestTimeout = pkcs11ha.Duration(150 * time.Millisecond)
	ts := startUnix(t, cfg, be)
	key := be.keys["payments"]["ec-key"]
	digest := sha256.Sum256([]byte("x"))
	tests := []struct {
		name   string
		hook   func(ctx context.Context) error
		status int
		code   string
	}{
		{"deadline", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, 504, sidecarapi.CodeDeadlineExceeded},
		{"no device", func(context.Context) error { return fmt.Errorf("sign: %w", pkcs11ha.ErrNoDevice) }, 503, sidecarapi.CodeNoDevice},
		{"cluster closed", func(context.Context) error { return pkcs11ha.ErrClosed }, 503, sidecarapi.CodeShuttingDown},
		{"input error", func(context.Context) error { return &pkcs11ha.InputError{Msg: "sign: nope"} }, 400, sidecarapi.CodeInvalidInput},
		{"mechanism", func(context.Context) error { return &pkcs11ha.MechanismError{Device: "d", Mechanism: "CKM_X"} }, 400, sidecarapi.CodeUnsupportedMechanism},
		{"unexpected", func(context.Context) error { return errors.New("boom: secret detail") }, 500, sidecarapi.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key.hook = tt.hook
			defer func() { key.hook = nil }()
			status, body := ts.call(t, "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"))
			require.Equal(t, tt.status, status, "body: %s", body)
			code, msg := apiErr(t, body)
			assert.Equal(t, tt.code, code)
			assert.NotContains(t, msg, "secret detail")
		})
	}
	assert.Contains(t, ts.logs.String(), "boom: secret detail", "a 500's cause is logged")
}

// TestUnknownClient: a unix peer that is in no clients: entry gets 401 on every API endpoint; probes and
// metrics stay open.
func TestUnknownClient(t *testing.T) {
	other := sidecarconfig.ClientConfig{Name: "other", UnixUID: intp(os.Getuid() + 1), Partitions: []string{"payments"}}
	ts := startUnix(t, fakeConfig(other), newFakeBackend(t))
	for _, p := range []struct{ method, path string }{
		{"GET", "/v1/partitions/payments/keys"},
		{"GET", "/v1/partitions/payments/keys/ec-key"},
		{"POST", "/v1/partitions/payments/keys/ec-key/sign"},
		{"POST", "/v1/partitions/payments/keys/rsa-key/decrypt"},
		{"GET", "/v1/partitions/nope/keys"},
		{"GET", "/v1/status"},
	} {
		status, body := ts.call(t, p.method, p.path, "{}")
		require.Equal(t, 401, status, "%s %s: %s", p.method, p.path, body)
		code, msg := apiErr(t, body)
		assert.Equal(t, sidecarapi.CodeUnauthenticated, code)
		assert.Contains(t, msg, fmt.Sprintf("uid=%d", os.Getuid()))
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		status, _ := ts.call(t, "GET", p, "")
		assert.Equal(t, 200, status, p)
	}
}

// TestReloadClients swaps the table atomically and refuses a bad one.
func TestReloadClients(t *testing.T) {
	ts := startUnix(t, fakeConfig(me("payments")), newFakeBackend(t))
	get := func(p string) int {
		s, _ := ts.call(t, "GET", "/v1/partitions/"+p+"/keys", "")
		return s
	}
	require.Equal(t, 200, get("payments"))
	require.Equal(t, 403, get("ledger"))

	byGID := sidecarconfig.ClientConfig{Name: "group", UnixGID: intp(os.Getgid()), Partitions: []string{"ledger"}}
	require.NoError(t, ts.srv.ReloadClients([]sidecarconfig.ClientConfig{byGID}))
	assert.Equal(t, 403, get("payments"))
	assert.Equal(t, 200, get("ledger"))

	bad := []sidecarconfig.ClientConfig{me("payments", "nope")}
	err := ts.srv.ReloadClients(bad)
	var ce *pkcs11ha.ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "clients[me].partitions", ce.Field)
	require.Error(t, ts.srv.ReloadClients([]sidecarconfig.ClientConfig{{Name: "nobody", Partitions: []string{"payments"}}}))
	assert.Equal(t, 200, get("ledger"), "a refused reload keeps the table")

	require.NoError(t, ts.srv.ReloadClients(nil))
	assert.Equal(t, 401, get("ledger"))
	_, body := ts.call(t, "GET", "/metrics", "")
	assert.Contains(t, string(body), `hsm_ha_proxy_client_reloads_total{result="error"} 2`)
	assert.Contains(t, string(body), `hsm_ha_proxy_client_reloads_total{result="ok"} 2`)
}

// TestReadyz answers 503 not_ready when the backend is not ready.
func TestReadyz(t *testing.T) {
	be := newFakeBackend(t)
	be.ready = false
	ts := startUnix(t, fakeConfig(me("payments")), be)
	status, body := ts.call(t, "GET", "/readyz", "")
	require.Equal(t, 503, status)
	code, _ := apiErr(t, body)
	assert.Equal(t, sidecarapi.CodeNotReady, code)
	_, body = ts.call(t, "GET", "/v1/status", "")
	assert.JSONEq(t, `false`, string(fields(t, body, "ready", "devices")["ready"]))
}

// TestAccessLog: one line per request with who, what, where and how; never the digest or signature.
func TestAccessLog(t *testing.T) {
	ts := startUnix(t, fakeConfig(me("payments")), newFakeBackend(t))
	digest := sha256.Sum256([]byte("payload that must not be logged"))
	status, body := ts.call(t, "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"))
	require.Equal(t, 200, status)
	sig := str(t, fields(t, body, "signature", "device")["signature"])
	status, _ = ts.call(t, "POST", "/v1/partitions/ledger/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"))
	require.Equal(t, 403, status)

	logs := ts.logs.String()
	assert.NotContains(t, logs, base64.StdEncoding.EncodeToString(digest[:]))
	assert.NotContains(t, logs, sig)
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		if m["msg"] == "access" && m["operation"] == "sign" {
			lines = append(lines, m)
		}
	}
	require.Len(t, lines, 2)
	ok, denied := lines[0], lines[1]
	assert.Equal(t, "me", ok["client"])
	assert.Equal(t, "payments", ok["partition"])
	assert.Equal(t, "ec-key", ok["key"])
	assert.Equal(t, "ECDSA_SHA256", ok["algorithm"])
	assert.Equal(t, "fake-1", ok["device"])
	assert.Equal(t, "ok", ok["outcome"])
	assert.EqualValues(t, 200, ok["status"])
	assert.Contains(t, ok, "latency_ms")
	assert.Contains(t, ok["peer"], fmt.Sprintf("uid=%d", os.Getuid()))
	assert.Equal(t, "ledger", denied["partition"])
	assert.Equal(t, sidecarapi.CodeForbidden, denied["outcome"])
	assert.EqualValues(t, 403, denied["status"])
}

// TestGracefulShutdown: cancelling Serve's context stops accepting at once (the socket disappears) and
// lets in-flight requests finish.
func TestGracefulShutdown(t *testing.T) {
	be := newFakeBackend(t)
	release := make(chan struct{})
	var entered sync.WaitGroup
	const n = 4
	entered.Add(n)
	be.keys["payments"]["ec-key"].hook = func(ctx context.Context) error {
		entered.Done()
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ts := startUnix(t, fakeConfig(me("payments")), be)
	digest := sha256.Sum256([]byte("x"))
	results := make(chan int, n)
	for range n {
		go func() {
			s, _ := ts.call(t, "POST", "/v1/partitions/payments/keys/ec-key/sign", signBody(digest[:], "ECDSA_SHA256"))
			results <- s
		}()
	}
	entered.Wait()
	stopped := make(chan error, 1)
	go func() { stopped <- ts.stop() }()
	require.Eventually(t, func() bool { _, err := os.Lstat(ts.addr); return os.IsNotExist(err) }, 5*time.Second, 5*time.Millisecond,
		"the socket is removed when shutdown starts")
	_, err := net.Dial("unix", ts.addr)
	require.Error(t, err, "no new connections")
	select {
	case err := <-stopped:
		t.Fatalf("Serve returned (%v) with requests in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	for range n {
		assert.Equal(t, 200, <-results)
	}
	require.NoError(t, <-stopped)
}

// TestShutdownGraceExpires: requests still running after the grace period are cancelled and Serve
// returns.
func TestShutdownGraceExpires(t *testing.T) {
	be := newFakeBackend(t)
	entered := make(chan struct{})
	be.keys["payments"]["ec-key"].hook = func(ctx context.Context) error {
		close(entered)
		<-ctx.Done()
		return ctx.Err()
	}
	cfg := fakeConfig(me("payments"))
	cfg.Server.ShutdownGrace = pkcs11ha.Duration(100 * time.Millisecond)
	cfg.Policy.RequestTimeout = pkcs11ha.Duration(time.Minute)
	ts := startUnix(t, cfg, be)
	digest := sha256.Sum256([]byte("x"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest("POST", ts.base+"/v1/partitions/payments/keys/ec-key/sign", strings.NewReader(signBody(digest[:], "ECDSA_SHA256")))
		if resp, err := ts.hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	// The handler waits for its context, which only the end of the grace period cancels (the request timeout
	// is a minute): stop returning well before the request timeout shows the grace period ended it.
	start := time.Now()
	require.NoError(t, ts.stop())
	assert.Less(t, time.Since(start), 30*time.Second)
	<-done
	assert.Contains(t, ts.logs.String(), "grace period over")
}

// TestTLSIdentities: client certificates are identified by URI SAN, DNS SAN, else CN; certificates that
// do not chain to client_ca, lack the client-auth usage or are missing fail the handshake.
func TestTLSIdentities(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "clients")
	srvCert, srvKey := ca.ServerCert(t)
	uriCert, uriKey := ca.Issue(t, "uri", uriSAN("spiffe://test/app-a"))
	dnsCert, dnsKey := ca.Issue(t, "dns", dnsSAN("app-b.test"))
	cnCert, cnKey := ca.Issue(t, "app-c", nil)
	cnWithSANCert, cnWithSANKey := ca.Issue(t, "app-c", dnsSAN("something-else.test")) // the CN is ignored when SANs exist
	serverOnlyCert, serverOnlyKey := ca.Issue(t, "app-c", func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	rogue := newCA(t, t.TempDir(), "rogue")
	rogueCert, rogueKey := rogue.Issue(t, "app-c", nil)

	cfg := fakeConfig(
		sidecarconfig.ClientConfig{Name: "a", CertName: "spiffe://test/app-a", Partitions: []string{"payments"}},
		sidecarconfig.ClientConfig{Name: "b", CertName: "app-b.test", Partitions: []string{"ledger"}},
		sidecarconfig.ClientConfig{Name: "c", CertName: "app-c", Partitions: []string{"payments", "ledger"}},
	)
	cfg.Server = sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", TLS: sidecarconfig.TLSConfig{Cert: srvCert, Key: srvKey, ClientCA: ca.PEMPath}}
	ln, err := Listen(cfg.Server)
	require.NoError(t, err)
	srv := newServer(cfg, newFakeBackend(t), nil, nil)
	serveOn(t, srv, ln)
	url := "https://" + ln.Addr().String()

	client := func(tc *tls.Config) *http.Client {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		t.Cleanup(hc.CloseIdleConnections)
		return hc
	}
	tests := []struct {
		name            string
		cert, key       string
		trust           *testCA
		payments, ledge int // status per partition; 0: the handshake fails
	}{
		{"URI SAN", uriCert, uriKey, ca, 200, 403},
		{"DNS SAN", dnsCert, dnsKey, ca, 403, 200},
		{"CN without SANs", cnCert, cnKey, ca, 200, 200},
		{"CN ignored with SANs", cnWithSANCert, cnWithSANKey, ca, 401, 401},
		{"no client-auth usage", serverOnlyCert, serverOnlyKey, ca, 0, 0},
		{"other CA", rogueCert, rogueKey, ca, 0, 0},
		{"no certificate", "", "", ca, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc := client(clientTLS(t, tt.trust, tt.cert, tt.key))
			for p, want := range map[string]int{"payments": tt.payments, "ledger": tt.ledge} {
				resp, err := hc.Get(url + "/v1/partitions/" + p + "/keys")
				if want == 0 {
					require.Error(t, err, "the handshake must fail")
					continue
				}
				require.NoError(t, err)
				resp.Body.Close()
				assert.Equal(t, want, resp.StatusCode, p)
			}
		})
	}
}

// TestClassify is the error table of the API.
func TestClassify(t *testing.T) {
	live := context.Background()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	gone, cancel2 := context.WithCancel(context.Background())
	cancel2()
	tests := []struct {
		name   string
		ctx    context.Context
		err    error
		status int
		code   string
	}{
		{"request deadline", expired, errors.New("whatever the last attempt said"), 504, sidecarapi.CodeDeadlineExceeded},
		{"deadline from the library", live, fmt.Errorf("x: %w", context.DeadlineExceeded), 504, sidecarapi.CodeDeadlineExceeded},
		{"client gone", gone, context.Canceled, statusClientClosed, codeCanceled},
		{"decryption refused", live, fmt.Errorf("%w (device d)", rsa.ErrDecryption), 400, sidecarapi.CodeDecryptionFailed},
		{"mechanism", live, &pkcs11ha.MechanismError{Device: "d", Mechanism: "CKM_RSA_PKCS_OAEP"}, 400, sidecarapi.CodeUnsupportedMechanism},
		{"unknown partition", live, fmt.Errorf("%w: %q", pkcs11ha.ErrUnknownPartition, "p"), 404, sidecarapi.CodeUnknownPartition},
		{"unknown key", live, fmt.Errorf("%w: %q", pkcs11ha.ErrUnknownKey, "k"), 404, sidecarapi.CodeUnknownKey},
		{"closed", live, pkcs11ha.ErrClosed, 503, sidecarapi.CodeShuttingDown},
		{"no device", live, fmt.Errorf("op: %w", pkcs11ha.ErrNoDevice), 503, sidecarapi.CodeNoDevice},
		{"input", live, &pkcs11ha.InputError{Msg: "sign: digest has 3 bytes"}, 400, sidecarapi.CodeInvalidInput},
		{"device down", live, &pkcs11ha.DeviceError{Device: "d", Op: "C_Sign", Code: 0x30, Class: pkcs11ha.ClassDeviceDown}, 503, sidecarapi.CodeNoDevice},
		{"token caller error", live, &pkcs11ha.DeviceError{Device: "d", Op: "C_SignInit", Code: 0x70, Class: pkcs11ha.ClassCaller}, 400, sidecarapi.CodeInvalidInput},
		{"token refused decrypt", live, &pkcs11ha.DeviceError{Device: "d", Op: "C_Decrypt", Code: 0x40, Class: pkcs11ha.ClassDecryptRefused}, 400, sidecarapi.CodeDecryptionFailed},
		{"PIN rejected everywhere", live, &pkcs11ha.DeviceError{Device: "d", Op: "C_Login", Code: 0xA0, Class: pkcs11ha.ClassCredential}, 503, sidecarapi.CodeNoDevice},
		{"unexpected", live, errors.New("boom"), 500, sidecarapi.CodeInternal},
		{"api error passes through", live, errorf(413, sidecarapi.CodeBodyTooLarge, "x"), 413, sidecarapi.CodeBodyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ae := classify(tt.ctx, tt.err)
			assert.Equal(t, tt.status, ae.status)
			assert.Equal(t, tt.code, ae.code)
			assert.NotEmpty(t, ae.msg)
		})
	}
}
