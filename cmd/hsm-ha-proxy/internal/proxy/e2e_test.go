package proxy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// e2eOptions describe one sidecar on a SoftHSM topology.
type e2eOptions struct {
	policy  string // YAML under policy:
	clients string // YAML under clients:; default: this process's uid may use payments and ledger
	server  sidecarconfig.ServerConfig
	part    string // YAML added to every partition (e.g. key_replication)
}

func meClients(partitions ...string) string {
	return fmt.Sprintf("- {name: me, unix_uid: %d, partitions: [%s]}", os.Getuid(), strings.Join(partitions, ", "))
}

var configSeq atomic.Int64

var pinSeq atomic.Int64

// startTopology starts SoftHSM devices for an end-to-end test (skipped with -short). Unless the test
// chooses partitions, each topology gets payments and ledger with PINs of its own, so that a leaked PIN
// is a distinctive string (not "1234", which a latency could contain).
func startTopology(t *testing.T, opts softhsmtest.Options) *softhsmtest.Topology {
	t.Helper()
	if testing.Short() {
		t.Skip("needs SoftHSM devices")
	}
	if opts.Partitions == nil {
		n := pinSeq.Add(1)
		opts.Partitions = []softhsmtest.PartitionSpec{
			{Name: "payments", PIN: fmt.Sprintf("pay-%d-%d", os.Getpid(), n), SOPIN: fmt.Sprintf("so-pay-%d", n)},
			{Name: "ledger", PIN: fmt.Sprintf("led-%d-%d", os.Getpid(), n), SOPIN: fmt.Sprintf("so-led-%d", n)},
		}
	}
	return harnesstest.Start(t, opts)
}

// startSidecar opens a cluster of the topology and serves it (on a fresh unix socket unless
// o.server.Listen is set). The server is stopped, then the cluster closed, when the test ends.
func startSidecar(t *testing.T, topo *softhsmtest.Topology, o e2eOptions) *testServer {
	t.Helper()
	if o.clients == "" {
		o.clients = meClients("payments", "ledger")
	}
	// Attempt deadlines no healthy device misses on a loaded host, unless the test is about deadlines: with the
	// defaults (50 ms local) a busy host makes every device time out and the request fail.
	if !strings.Contains(o.policy, "attempt_timeout") {
		o.policy = strings.TrimSpace(o.policy + "\nattempt_timeout: {local: 1s, dr: 2s}")
		if !strings.Contains(o.policy, "request_timeout") {
			o.policy += "\nrequest_timeout: 10s"
		}
	}
	path := filepath.Join(topo.Dir, fmt.Sprintf("sidecar-%d.yaml", configSeq.Add(1)))
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: o.policy, ClientsYAML: o.clients, PartitionYAML: o.part}))
	cfg, err := sidecarconfig.Load(path)
	require.NoError(t, err)
	logs := &softhsmtest.LogBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := pkcs11ha.Open(ctx, cfg.Library(), pkcs11ha.WithLogger(logger), pkcs11ha.WithRegisterer(reg))
	require.NoError(t, err)
	leakcheck.CloseCluster(t, cl) // and allows the calls the library reports stuck for good

	ts := &testServer{logs: logs, reg: reg}
	if o.server.Listen == "" {
		ts.addr = filepath.Join(shortTempDir(t), "s.sock")
		o.server.Listen = "unix://" + ts.addr
		ts.hc, ts.base = unixHTTPClient(ts.addr), "http://sidecar"
		t.Cleanup(ts.hc.CloseIdleConnections)
	}
	cfg.Server = o.server
	ln, err := Listen(cfg.Server)
	require.NoError(t, err)
	if ts.addr == "" {
		ts.addr = ln.Addr().String()
	}
	ts.srv = New(cfg, cl, logger, reg)
	ts.stop = serveOn(t, ts.srv, ln)
	return ts
}

func hashOf(h crypto.Hash, msg []byte) []byte {
	d := h.New()
	d.Write(msg)
	return d.Sum(nil)
}

// verify checks a signature of the API with the topology's key.
func verify(t testing.TB, pub crypto.PublicKey, alg string, input, sig []byte) {
	t.Helper()
	a := signAlgs[alg]
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if a.pss {
			require.NoError(t, rsa.VerifyPSS(k, a.hash, input, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}), alg)
			// Salt length = hash length, exactly.
			require.NoError(t, rsa.VerifyPSS(k, a.hash, input, sig, &rsa.PSSOptions{SaltLength: a.hash.Size()}), alg)
			return
		}
		require.NoError(t, rsa.VerifyPKCS1v15(k, a.hash, input, sig), alg)
	case *ecdsa.PublicKey:
		require.True(t, ecdsa.VerifyASN1(k, input, sig), "%s: DER ECDSA signature", alg)
	case ed25519.PublicKey:
		require.True(t, ed25519.Verify(k, input, sig), alg)
	default:
		t.Fatalf("unexpected key %T", pub)
	}
}

func pemOf(t testing.TB, pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func (ts *testServer) sign(t testing.TB, partition, label, field string, input []byte, alg string) (int, []byte) {
	t.Helper()
	body := fmt.Sprintf(`{%q:%q,"algorithm":%q}`, field, base64.StdEncoding.EncodeToString(input), alg)
	return ts.call(t, "POST", "/v1/partitions/"+partition+"/keys/"+label+"/sign", body)
}

func (ts *testServer) decrypt(t testing.TB, partition, label string, ct []byte, alg string) (int, []byte) {
	t.Helper()
	body := fmt.Sprintf(`{"ciphertext":%q,"algorithm":%q}`, base64.StdEncoding.EncodeToString(ct), alg)
	return ts.call(t, "POST", "/v1/partitions/"+partition+"/keys/"+label+"/decrypt", body)
}

// TestE2EUnixSocket runs every endpoint and every algorithm over a real unix socket against four SoftHSM
// devices and verifies every signature with the imported keys; then checks that no PIN, digest or
// signature reached the logs, the status or the metrics.
func TestE2EUnixSocket(t *testing.T) {
	const payPIN, ledPIN = "pay-PIN-7f3a91", "led-PIN-c2e84d"
	topo := startTopology(t, softhsmtest.Options{Partitions: []softhsmtest.PartitionSpec{
		{Name: "payments", PIN: payPIN, SOPIN: "so-7f3a91"},
		{Name: "ledger", PIN: ledPIN, SOPIN: "so-c2e84d"},
	}})
	ts := startSidecar(t, topo, e2eOptions{policy: "oaep_fallback: true"})
	devices := []string{"eastus-1", "eastus-2", "westus-1", "westus-2"}
	wantAlg := map[string]string{"rsa-key": "RSA_2048", "ec-key": "EC_P256", "ec384-key": "EC_P384", "ed-key": "ED25519"}
	wantID := map[string]string{"rsa-key": "01", "ec-key": "02", "ec384-key": "03", "ed-key": "04"}

	fi, err := os.Lstat(ts.addr)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "socket mode")
	assert.NotZero(t, fi.Mode()&os.ModeSocket)

	var secrets []string // everything that must never be logged
	for _, part := range []string{"payments", "ledger"} {
		t.Run("list keys "+part, func(t *testing.T) {
			status, body := ts.call(t, "GET", "/v1/partitions/"+part+"/keys", "")
			require.Equal(t, 200, status, "%s", body)
			var got struct {
				Keys []map[string]any `json:"keys"`
			}
			fields(t, body, "keys")
			require.NoError(t, json.Unmarshal(body, &got))
			require.Len(t, got.Keys, 4)
			for _, k := range got.Keys {
				label := k["label"].(string)
				assert.Len(t, k, 5, "KEY has label, id, algorithm, public_key, devices")
				assert.Equal(t, wantID[label], k["id"])
				assert.Equal(t, wantAlg[label], k["algorithm"])
				assert.Equal(t, pemOf(t, topo.Keys[label].Public()), k["public_key"])
				assert.ElementsMatch(t, devices, k["devices"])
			}
		})
	}
	t.Run("get key", func(t *testing.T) {
		for label := range wantAlg {
			status, body := ts.call(t, "GET", "/v1/partitions/payments/keys/"+label, "")
			require.Equal(t, 200, status, "%s", body)
			m := fields(t, body, "label", "id", "algorithm", "public_key", "devices")
			assert.Equal(t, label, str(t, m["label"]))
			assert.Equal(t, pemOf(t, topo.Keys[label].Public()), str(t, m["public_key"]))
		}
	})

	msg := []byte("message signed through the sidecar")
	for _, tc := range []struct{ label, alg string }{
		{"rsa-key", "RSA_PKCS1_SHA256"}, {"rsa-key", "RSA_PKCS1_SHA384"}, {"rsa-key", "RSA_PKCS1_SHA512"},
		{"rsa-key", "RSA_PSS_SHA256"}, {"rsa-key", "RSA_PSS_SHA384"}, {"rsa-key", "RSA_PSS_SHA512"},
		{"ec-key", "ECDSA_SHA256"}, {"ec-key", "ECDSA_SHA384"}, {"ec-key", "ECDSA_SHA512"},
		{"ec384-key", "ECDSA_SHA256"}, {"ec384-key", "ECDSA_SHA384"}, {"ec384-key", "ECDSA_SHA512"},
	} {
		t.Run("sign "+tc.label+" "+tc.alg, func(t *testing.T) {
			for _, part := range []string{"payments", "ledger"} {
				digest := hashOf(signAlgs[tc.alg].hash, msg)
				status, body := ts.sign(t, part, tc.label, "digest", digest, tc.alg)
				require.Equal(t, 200, status, "%s", body)
				m := fields(t, body, "signature", "device")
				sig, err := base64.StdEncoding.DecodeString(str(t, m["signature"]))
				require.NoError(t, err)
				verify(t, topo.Keys[tc.label].Public(), tc.alg, digest, sig)
				assert.Contains(t, devices, str(t, m["device"]))
				secrets = append(secrets, base64.StdEncoding.EncodeToString(digest), str(t, m["signature"]))
			}
		})
	}
	t.Run("ED25519 over p11-kit answers a clear 400", func(t *testing.T) {
		// p11-kit 0.24 cannot carry CKM_EDDSA over its RPC (docs/ARCHITECTURE.md, "Facts about SoftHSM and p11-kit"): the token refuses the mechanism,
		// a caller-class error. TestE2EEd25519 signs with in-process devices.
		status, body := ts.sign(t, "payments", "ed-key", "message", msg, "ED25519")
		require.Equal(t, 400, status, "%s", body)
		code, emsg := apiErr(t, body)
		assert.Equal(t, sidecarapi.CodeInvalidInput, code)
		assert.Contains(t, emsg, "MECHANISM_INVALID")
	})

	rsaPub := topo.Keys["rsa-key"].Public().(*rsa.PublicKey)
	secret := []byte("session key 0123456789abcdef")
	for _, tc := range []struct {
		alg     string
		encrypt func() ([]byte, error)
	}{
		{"RSA_OAEP_SHA1", func() ([]byte, error) { return rsa.EncryptOAEP(sha1.New(), rand.Reader, rsaPub, secret, nil) }},
		{"RSA_OAEP_SHA256", func() ([]byte, error) { return rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, secret, nil) }},
		{"RSA_PKCS1", func() ([]byte, error) { return rsa.EncryptPKCS1v15(rand.Reader, rsaPub, secret) }},
	} {
		t.Run("decrypt "+tc.alg, func(t *testing.T) {
			ct, err := tc.encrypt()
			require.NoError(t, err)
			status, body := ts.decrypt(t, "ledger", "rsa-key", ct, tc.alg)
			require.Equal(t, 200, status, "%s", body)
			m := fields(t, body, "plaintext")
			assert.Equal(t, base64.StdEncoding.EncodeToString(secret), str(t, m["plaintext"]))
			secrets = append(secrets, base64.StdEncoding.EncodeToString(ct), str(t, m["plaintext"]))
		})
	}

	t.Run("decrypt refused (OAEP decoded by the fallback)", func(t *testing.T) {
		status, body := ts.decrypt(t, "ledger", "rsa-key", badPadding(t, rsaPub), "RSA_OAEP_SHA256")
		require.Equal(t, 400, status, "%s", body)
		code, _ := apiErr(t, body)
		assert.Equal(t, sidecarapi.CodeDecryptionFailed, code)
	})

	t.Run("status", func(t *testing.T) {
		status, body := ts.call(t, "GET", "/v1/status", "")
		require.Equal(t, 200, status)
		m := fields(t, body, "ready", "devices")
		assert.JSONEq(t, "true", string(m["ready"]))
		var devs []sidecarapi.DeviceStatus
		require.NoError(t, json.Unmarshal(m["devices"], &devs))
		require.Len(t, devs, 4)
		for i, d := range devs {
			assert.Equal(t, devices[i], d.Name)
			assert.Equal(t, "up", d.State)
			assert.Equal(t, "closed", d.Breaker)
			assert.Equal(t, map[string]int{"eastus": 0, "westus": 1}[d.Region], d.Tier)
		}
		secrets = append(secrets, string(body))
	})
	t.Run("probes and metrics", func(t *testing.T) {
		status, body := ts.call(t, "GET", "/healthz", "")
		assert.Equal(t, 200, status, "%s", body)
		status, body = ts.call(t, "GET", "/readyz", "")
		assert.Equal(t, 200, status, "%s", body)
		status, body = ts.call(t, "GET", "/metrics", "")
		require.Equal(t, 200, status)
		for _, name := range []string{"pkcs11ha_operations_total", "pkcs11ha_attempts_total", "pkcs11ha_breaker_state",
			"hsm_ha_proxy_http_requests_total", "hsm_ha_proxy_http_request_duration_seconds", "hsm_ha_proxy_api_outcomes_total"} {
			assert.Contains(t, string(body), name)
		}
		assert.NotContains(t, string(body), payPIN)
	})
	t.Run("sidecarclient as crypto.Signer and crypto.Decrypter", func(t *testing.T) {
		c := sidecarclient.Dial(ts.addr)
		defer c.Close()
		ctx := context.Background()
		for _, label := range []string{"ec-key", "ec384-key", "rsa-key"} {
			k, err := c.Key(ctx, "payments", label)
			require.NoError(t, err)
			require.True(t, topo.Keys[label].Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()))
			// The standard library drives it: a self-signed certificate.
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: label},
				NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
			if label == "rsa-key" {
				tmpl.SignatureAlgorithm = x509.SHA256WithRSAPSS
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
			require.NoError(t, err)
			cert, err := x509.ParseCertificate(der)
			require.NoError(t, err)
			require.NoError(t, cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature))
		}
		k, err := c.Key(ctx, "ledger", "rsa-key")
		require.NoError(t, err)
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, secret, nil)
		require.NoError(t, err)
		pt, err := k.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256})
		require.NoError(t, err)
		assert.Equal(t, secret, pt)
		st, err := c.Status(ctx)
		require.NoError(t, err)
		assert.True(t, st.Ready)
		assert.Len(t, st.Devices, 4)
	})

	// Stop the sidecar so that every log line is written, then look for secrets.
	require.NoError(t, ts.stop())
	logs := ts.logs.String()
	require.Contains(t, logs, `"msg":"access"`)
	for _, s := range append(secrets, payPIN, ledPIN) {
		require.NotContains(t, logs, s)
	}
	for _, pin := range []string{payPIN, ledPIN} {
		for _, s := range secrets {
			require.NotContains(t, s, pin)
		}
	}
	_, err = os.Lstat(ts.addr)
	assert.True(t, os.IsNotExist(err), "the socket is removed at shutdown")
}

// TestE2EEd25519 signs with ED25519 on in-process SoftHSM devices (p11-kit cannot carry CKM_EDDSA).
func TestE2EEd25519(t *testing.T) {
	topo := startTopology(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{
		{Name: "local-1", Region: "eastus", InProcess: true},
		{Name: "local-2", Region: "eastus", InProcess: true},
	}})
	ts := startSidecar(t, topo, e2eOptions{})
	pub := topo.Keys["ed-key"].Public()
	for _, msg := range [][]byte{[]byte("hello"), {}, make([]byte, 64<<10)} {
		status, body := ts.sign(t, "payments", "ed-key", "message", msg, "ED25519")
		require.Equal(t, 200, status, "%s", body)
		m := fields(t, body, "signature", "device")
		sig, err := base64.StdEncoding.DecodeString(str(t, m["signature"]))
		require.NoError(t, err)
		verify(t, pub, "ED25519", msg, sig)
		assert.Contains(t, []string{"local-1", "local-2"}, str(t, m["device"]))
	}
	status, body := ts.sign(t, "payments", "ed-key", "digest", make([]byte, 32), "ED25519")
	require.Equal(t, 400, status)
	code, _ := apiErr(t, body)
	assert.Equal(t, sidecarapi.CodeInvalidRequest, code)

	c := sidecarclient.Dial(ts.addr)
	defer c.Close()
	k, err := c.Key(context.Background(), "ledger", "ed-key")
	require.NoError(t, err)
	sig, err := k.Sign(rand.Reader, []byte("via crypto.Signer"), crypto.Hash(0))
	require.NoError(t, err)
	assert.True(t, ed25519.Verify(pub.(ed25519.PublicKey), []byte("via crypto.Signer"), sig))
}

// badPadding returns an RSA ciphertext whose plaintext is neither valid OAEP nor PKCS#1 v1.5 padding.
func badPadding(t testing.TB, pub *rsa.PublicKey) []byte {
	em := make([]byte, pub.Size())
	_, err := rand.Read(em[2:])
	require.NoError(t, err)
	em[0], em[1] = 0x00, 0x07
	c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
	return c.FillBytes(make([]byte, pub.Size()))
}

// TestE2EErrorCodes answers every error code of the API with real devices behind it (policy without the
// OAEP fallback).
func TestE2EErrorCodes(t *testing.T) {
	topo := startTopology(t, softhsmtest.Options{})
	ts := startSidecar(t, topo, e2eOptions{clients: meClients("payments")})
	rsaPub := topo.Keys["rsa-key"].Public().(*rsa.PublicKey)
	d256 := hashOf(crypto.SHA256, []byte("x"))
	ct256, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, []byte("s"), nil)
	require.NoError(t, err)
	sign := func(label, body string) func() (int, []byte) {
		return func() (int, []byte) { return ts.call(t, "POST", "/v1/partitions/payments/keys/"+label+"/sign", body) }
	}
	tests := []struct {
		name   string
		do     func() (int, []byte)
		status int
		code   string
	}{
		{"malformed JSON", sign("ec-key", `{"digest"`), 400, sidecarapi.CodeMalformedJSON},
		{"invalid request", sign("ec-key", `{"digest":"%%%","algorithm":"ECDSA_SHA256"}`), 400, sidecarapi.CodeInvalidRequest},
		{"unknown algorithm", sign("ec-key", signBody(d256, "ECDSA_SHA224")), 400, sidecarapi.CodeUnknownAlgorithm},
		{"algorithm for another key", sign("rsa-key", signBody(d256, "ECDSA_SHA256")), 400, sidecarapi.CodeAlgorithmKeyMismatch},
		{"wrong digest length", sign("ec-key", signBody(d256[:31], "ECDSA_SHA256")), 400, sidecarapi.CodeBadDigestLength},
		{"wrong ciphertext length", func() (int, []byte) { return ts.decrypt(t, "payments", "rsa-key", ct256[:100], "RSA_PKCS1") }, 400, sidecarapi.CodeBadCiphertextLength},
		{"OAEP SHA-256 without the fallback", func() (int, []byte) { return ts.decrypt(t, "payments", "rsa-key", ct256, "RSA_OAEP_SHA256") }, 400, sidecarapi.CodeUnsupportedMechanism},
		{"mechanism the token refuses", func() (int, []byte) { return ts.sign(t, "payments", "ed-key", "message", []byte("m"), "ED25519") }, 400, sidecarapi.CodeInvalidInput},
		{"partition not granted", func() (int, []byte) { return ts.call(t, "GET", "/v1/partitions/ledger/keys", "") }, 403, sidecarapi.CodeForbidden},
		{"unknown partition", func() (int, []byte) { return ts.call(t, "GET", "/v1/partitions/treasury/keys", "") }, 404, sidecarapi.CodeUnknownPartition},
		{"unknown key", func() (int, []byte) { return ts.call(t, "GET", "/v1/partitions/payments/keys/nope", "") }, 404, sidecarapi.CodeUnknownKey},
		{"unknown endpoint", func() (int, []byte) { return ts.call(t, "GET", "/v1/keys", "") }, 404, sidecarapi.CodeNotFound},
		{"wrong method", func() (int, []byte) { return ts.call(t, "PUT", "/v1/partitions/payments/keys/ec-key/sign", "{}") }, 405, sidecarapi.CodeMethodNotAllowed},
		{"body over 1 MiB", sign("ec-key", `{"digest":"`+strings.Repeat("A", MaxBodyBytes)+`","algorithm":"ECDSA_SHA256"}`), 413, sidecarapi.CodeBodyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := tt.do()
			require.Equal(t, tt.status, status, "%s", body)
			code, _ := apiErr(t, body)
			assert.Equal(t, tt.code, code)
		})
	}
	t.Run("decrypt refused by the token", func(t *testing.T) {
		for _, alg := range []string{"RSA_OAEP_SHA1", "RSA_PKCS1"} {
			// SoftHSM answers a bad padding with CKR_GENERAL_ERROR; the library must still treat it as a
			// refusal: 400, never retried on other devices, never counted on a breaker.
			status, body := ts.decrypt(t, "payments", "rsa-key", badPadding(t, rsaPub), alg)
			require.Equal(t, 400, status, "%s: %s", alg, body)
			code, _ := apiErr(t, body)
			assert.Equal(t, sidecarapi.CodeDecryptionFailed, code, alg)
		}
	})
	t.Run("unknown client", func(t *testing.T) {
		require.NoError(t, ts.srv.ReloadClients([]sidecarconfig.ClientConfig{{Name: "x", UnixUID: intp(os.Getuid() + 1), Partitions: []string{"payments"}}}))
		status, body := ts.call(t, "GET", "/v1/partitions/payments/keys", "")
		require.Equal(t, 401, status)
		code, _ := apiErr(t, body)
		assert.Equal(t, sidecarapi.CodeUnauthenticated, code)
		require.NoError(t, ts.srv.ReloadClients([]sidecarconfig.ClientConfig{{Name: "me", UnixUID: intp(os.Getuid()), Partitions: []string{"payments"}}}))
	})
	// Last: take every device off the network.
	t.Run("no device", func(t *testing.T) {
		for _, d := range topo.Devices {
			require.NoError(t, d.Down())
		}
		status, body := ts.sign(t, "payments", "ec-key", "digest", d256, "ECDSA_SHA256")
		require.Equal(t, 503, status, "%s", body)
		code, _ := apiErr(t, body)
		assert.Equal(t, sidecarapi.CodeNoDevice, code)
		require.Eventually(t, func() bool {
			status, _ := ts.call(t, "GET", "/readyz", "")
			return status == 503
		}, 10*time.Second, 20*time.Millisecond)
		_, body = ts.call(t, "GET", "/readyz", "")
		code, _ = apiErr(t, body)
		assert.Equal(t, sidecarapi.CodeNotReady, code)
	})
}

// TestE2EDeadline: a request that no device answers within policy.request_timeout gets 504, at the request
// deadline: every device hangs (its relay holds the bytes) until the answer has come, so the answer cannot
// have waited for a device.
func TestE2EDeadline(t *testing.T) {
	topo := startTopology(t, softhsmtest.Options{})
	ts := startSidecar(t, topo, e2eOptions{policy: "request_timeout: 300ms\nattempt_timeout: {local: 2s, dr: 2s}"})
	d256 := hashOf(crypto.SHA256, []byte("x"))
	status, body := ts.sign(t, "payments", "ec-key", "digest", d256, "ECDSA_SHA256")
	require.Equal(t, 200, status, "%s", body)
	for _, d := range topo.Devices {
		require.NoError(t, d.Hang())
	}
	start := time.Now()
	status, body = ts.sign(t, "payments", "ec-key", "digest", d256, "ECDSA_SHA256")
	t.Logf("answered after %v", time.Since(start))
	for _, d := range topo.Devices {
		require.NoError(t, d.Pass())
	}
	require.Equal(t, 504, status, "%s", body)
	code, _ := apiErr(t, body)
	assert.Equal(t, sidecarapi.CodeDeadlineExceeded, code)
}

// mtlsSidecar serves a topology over mutual TLS with clients a (URI SAN, payments) and b (DNS SAN,
// ledger); it returns the sidecar and a client per certificate.
func mtlsSidecar(t *testing.T, topo *softhsmtest.Topology) (*testServer, map[string]*sidecarclient.Client) {
	dir := t.TempDir()
	ca := newCA(t, dir, "clients")
	srvCert, srvKey := ca.ServerCert(t)
	aCert, aKey := ca.Issue(t, "a", uriSAN("spiffe://example.org/app-a"))
	bCert, bKey := ca.Issue(t, "b", dnsSAN("app-b.example.org"))
	xCert, xKey := ca.Issue(t, "intruder", nil)
	ts := startSidecar(t, topo, e2eOptions{
		policy: "oaep_fallback: true",
		clients: `
- {name: app-a, cert_name: "spiffe://example.org/app-a", partitions: [payments]}
- {name: app-b, cert_name: app-b.example.org, partitions: [ledger]}`,
		server: sidecarconfig.ServerConfig{Listen: "tcp://127.0.0.1:0", TLS: sidecarconfig.TLSConfig{Cert: srvCert, Key: srvKey, ClientCA: ca.PEMPath}},
	})
	clients := map[string]*sidecarclient.Client{
		"app-a":    sidecarclient.DialTLS(ts.addr, clientTLS(t, ca, aCert, aKey)),
		"app-b":    sidecarclient.DialTLS("https://"+ts.addr, clientTLS(t, ca, bCert, bKey)),
		"intruder": sidecarclient.DialTLS(ts.addr, clientTLS(t, ca, xCert, xKey)),
		"no-cert":  sidecarclient.DialTLS(ts.addr, clientTLS(t, ca, "", "")),
	}
	for _, c := range clients {
		t.Cleanup(func() { c.Close() })
	}
	return ts, clients
}

// TestE2EAuthorizationMatrixTLS: two clients, two partitions, every partition endpoint, over mutual TLS;
// signatures and plaintexts are checked where access is granted.
func TestE2EAuthorizationMatrixTLS(t *testing.T) {
	topo := startTopology(t, softhsmtest.Options{})
	_, clients := mtlsSidecar(t, topo)
	ctx := context.Background()
	rsaPub := topo.Keys["rsa-key"].Public().(*rsa.PublicKey)
	secret := []byte("matrix")
	grants := map[string]string{"app-a": "payments", "app-b": "ledger"}
	ops := map[string]func(c *sidecarclient.Client, part string) error{
		"list keys": func(c *sidecarclient.Client, part string) error {
			keys, err := c.Keys(ctx, part)
			if err == nil && len(keys) != 4 {
				return fmt.Errorf("%d keys", len(keys))
			}
			return err
		},
		"get key": func(c *sidecarclient.Client, part string) error { _, err := c.Key(ctx, part, "ec-key"); return err },
		"sign": func(c *sidecarclient.Client, part string) error {
			// The public key is pinned: a client may try to sign with a key it may not even read.
			k := c.KeyWithPublic(part, "ec-key", topo.Keys["ec-key"].Public())
			d := hashOf(crypto.SHA256, []byte(part))
			sig, err := k.SignContext(ctx, d, crypto.SHA256)
			if err == nil && !ecdsa.VerifyASN1(topo.Keys["ec-key"].Public().(*ecdsa.PublicKey), d, sig) {
				return errors.New("signature does not verify")
			}
			return err
		},
		"decrypt": func(c *sidecarclient.Client, part string) error {
			k := c.KeyWithPublic(part, "rsa-key", rsaPub)
			ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, secret, nil)
			if err != nil {
				return err
			}
			pt, err := k.DecryptContext(ctx, ct, &rsa.OAEPOptions{Hash: crypto.SHA256})
			if err == nil && string(pt) != string(secret) {
				return errors.New("wrong plaintext")
			}
			return err
		},
	}
	for _, client := range []string{"app-a", "app-b", "intruder"} {
		for _, part := range []string{"payments", "ledger"} {
			for name, op := range ops {
				t.Run(client+"/"+part+"/"+name, func(t *testing.T) {
					err := op(clients[client], part)
					switch {
					case client == "intruder":
						requireAPIError(t, err, 401, sidecarapi.CodeUnauthenticated)
					case grants[client] == part:
						require.NoError(t, err)
					default:
						requireAPIError(t, err, 403, sidecarapi.CodeForbidden)
					}
				})
			}
		}
	}
	t.Run("status", func(t *testing.T) {
		for _, c := range []string{"app-a", "app-b"} {
			st, err := clients[c].Status(ctx)
			require.NoError(t, err)
			assert.Len(t, st.Devices, 4)
		}
		_, err := clients["intruder"].Status(ctx)
		requireAPIError(t, err, 401, sidecarapi.CodeUnauthenticated)
	})
	t.Run("no client certificate", func(t *testing.T) {
		_, err := clients["no-cert"].Status(ctx)
		require.Error(t, err)
		var ae *sidecarclient.APIError
		assert.False(t, errors.As(err, &ae), "refused in the TLS handshake, not by the API: %v", err)
	})
}

func requireAPIError(t testing.TB, err error, status int, code string) {
	t.Helper()
	var ae *sidecarclient.APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, status, ae.StatusCode)
	assert.Equal(t, code, ae.Code)
}

// TestE2EDeviceKilledDuringRequests: a device killed (SIGKILL) while requests run through the sidecar
// costs no request.
func TestE2EDeviceKilledDuringRequests(t *testing.T) {
	topo := startTopology(t, softhsmtest.Options{})
	ts := startSidecar(t, topo, e2eOptions{})
	c := sidecarclient.Dial(ts.addr)
	defer c.Close()
	ctx := context.Background()
	ecKey, err := c.Key(ctx, "payments", "ec-key")
	require.NoError(t, err)
	rsaKey, err := c.Key(ctx, "ledger", "rsa-key")
	require.NoError(t, err)

	const workers = 4
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	afterKill := map[string]int{}
	var killed atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, pub := ecKey, topo.Keys["ec-key"].Public()
			alg := "ECDSA_SHA256"
			var opts crypto.SignerOpts = crypto.SHA256
			if w == 0 {
				key, pub, alg = rsaKey, topo.Keys["rsa-key"].Public(), "RSA_PSS_SHA256"
				opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := hashOf(crypto.SHA256, fmt.Appendf(nil, "%d/%d", w, i))
				sig, dev, err := key.SignDevice(ctx, d, opts)
				if err == nil {
					verify(t, pub, alg, d, sig)
					ok.Add(1)
					if killed.Load() {
						mu.Lock()
						afterKill[dev]++
						mu.Unlock()
					}
					continue
				}
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	require.Eventually(t, func() bool { return ok.Load() >= 100 }, 20*time.Second, time.Millisecond)
	require.NoError(t, topo.Device("eastus-1").Kill())
	killed.Store(true)
	before := ok.Load()
	require.Eventually(t, func() bool { return ok.Load() >= before+300 }, 30*time.Second, time.Millisecond)
	close(stop)
	wg.Wait()
	require.Zero(t, failed.Load(), "first error: %v", firstErr)
	t.Logf("%d signatures, after the kill served by %v", ok.Load(), afterKill)
	assert.Positive(t, afterKill["eastus-2"], "the surviving local device takes the traffic")

	st, err := c.Status(ctx)
	require.NoError(t, err)
	i := slices.IndexFunc(st.Devices, func(d sidecarapi.DeviceStatus) bool { return d.Name == "eastus-1" })
	require.GreaterOrEqual(t, i, 0)
	assert.NotEqual(t, "up", st.Devices[i].State)
}
