package proxy

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// testKeys are software keys for the tests that do not need an HSM (generated once per process).
func testKeys(t testing.TB) softhsmtest.SoftKeys { return harnesstest.SoftKeys(t) }

// fakeKey is a keyHandle backed by a software key. hook, if set, runs before every operation (to block,
// fail or observe).
type fakeKey struct {
	info   pkcs11ha.KeyInfo
	signer crypto.Signer
	hook   func(ctx context.Context) error
}

func (k *fakeKey) Info() pkcs11ha.KeyInfo   { return k.info }
func (k *fakeKey) Public() crypto.PublicKey { return k.signer.Public() }

func (k *fakeKey) SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error) {
	if k.hook != nil {
		if err := k.hook(ctx); err != nil {
			return nil, "", err
		}
	}
	sig, err := k.signer.Sign(rand.Reader, digest, opts)
	return sig, "fake-1", err
}

func (k *fakeKey) DecryptDevice(ctx context.Context, ct []byte, opts crypto.DecrypterOpts) ([]byte, string, error) {
	if k.hook != nil {
		if err := k.hook(ctx); err != nil {
			return nil, "", err
		}
	}
	pt, err := k.signer.(crypto.Decrypter).Decrypt(rand.Reader, ct, opts)
	return pt, "fake-1", err
}

// fakeBackend serves fake keys: partition -> label -> key.
type fakeBackend struct {
	keys    map[string]map[string]*fakeKey
	secrets map[string]*fakeSecret // "partition/label"
	ready   bool
}

func (b *fakeBackend) SecretKey(_ context.Context, partition, label string) (secretHandle, error) {
	if k, ok := b.secrets[partition+"/"+label]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("%w: secret key %q in partition %q", pkcs11ha.ErrUnknownKey, label, partition)
}

func (b *fakeBackend) SecretKeys(partition string) ([]pkcs11ha.SecretKeyInfo, error) {
	var out []pkcs11ha.SecretKeyInfo
	for name, k := range b.secrets {
		if strings.HasPrefix(name, partition+"/") {
			out = append(out, k.info)
		}
	}
	return out, nil
}

func (b *fakeBackend) Key(_ context.Context, partition, label string) (keyHandle, error) {
	p, ok := b.keys[partition]
	if !ok {
		return nil, fmt.Errorf("%w: %q", pkcs11ha.ErrUnknownPartition, partition)
	}
	k, ok := p[label]
	if !ok {
		return nil, fmt.Errorf("%w: %q in partition %q", pkcs11ha.ErrUnknownKey, label, partition)
	}
	return k, nil
}

func (b *fakeBackend) Keys(partition string) ([]pkcs11ha.KeyInfo, error) {
	p, ok := b.keys[partition]
	if !ok {
		return nil, fmt.Errorf("%w: %q", pkcs11ha.ErrUnknownPartition, partition)
	}
	var out []pkcs11ha.KeyInfo
	for _, k := range p {
		out = append(out, k.info)
	}
	return out, nil
}

func (b *fakeBackend) Status() []pkcs11ha.DeviceStatus {
	return []pkcs11ha.DeviceStatus{{Name: "fake-1", Region: "eastus", State: "up", Breaker: "closed"}}
}

func (b *fakeBackend) Ready() bool { return b.ready }

// newFakeBackend has partitions payments and ledger, each with rsa-key and ec-key.
func newFakeBackend(t testing.TB) *fakeBackend {
	k := testKeys(t)
	mk := func(label, id, alg string, s crypto.Signer) *fakeKey {
		return &fakeKey{info: pkcs11ha.KeyInfo{Label: label, ID: id, Algorithm: alg, Public: s.Public(), Devices: []string{"fake-1"}}, signer: s}
	}
	b := &fakeBackend{ready: true, keys: map[string]map[string]*fakeKey{}}
	for _, p := range []string{"payments", "ledger"} {
		b.keys[p] = map[string]*fakeKey{
			"rsa-key": mk("rsa-key", "01", "RSA_2048", k.RSA),
			"ec-key":  mk("ec-key", "02", "EC_P256", k.EC),
		}
	}
	return b
}

func intp(v int) *int { return &v }

// fakeConfig is a config with partitions payments and ledger and the given clients.
func fakeConfig(clients ...sidecarconfig.ClientConfig) *sidecarconfig.Config {
	return &sidecarconfig.Config{
		Topology: pkcs11ha.Topology{Partitions: []pkcs11ha.PartitionConfig{{Name: "payments"}, {Name: "ledger"}}},
		Clients:  clients,
	}
}

// shortTempDir is a temporary directory with a short path (unix socket paths are limited to 107 bytes).
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testServer is a Server running on a listener, with a client for it.
type testServer struct {
	srv  *Server
	addr string // socket path or host:port
	hc   *http.Client
	base string
	logs *softhsmtest.LogBuffer
	reg  *prometheus.Registry
	stop func() error // cancels Serve and waits for it to return
}

// serveOn runs srv on ln until the test ends (or stop is called).
func serveOn(t testing.TB, srv *Server, ln net.Listener) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Serve did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { require.NoError(t, stop()) })
	return stop
}

// startUnix runs a server of backend be on a fresh unix socket.
func startUnix(t testing.TB, cfg *sidecarconfig.Config, be backend) *testServer {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "s.sock")
	ln, err := Listen(sidecarconfig.ServerConfig{Listen: "unix://" + sock})
	require.NoError(t, err)
	logs := &softhsmtest.LogBuffer{}
	reg := prometheus.NewRegistry()
	srv := newServer(cfg, be, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), reg)
	ts := &testServer{srv: srv, addr: sock, hc: unixHTTPClient(sock), base: "http://sidecar", logs: logs, reg: reg}
	t.Cleanup(ts.hc.CloseIdleConnections)
	ts.stop = serveOn(t, srv, ln)
	return ts
}

func unixHTTPClient(sock string) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

// call sends one request and returns the status and the body.
func (ts *testServer) call(t testing.TB, method, path, body string) (int, []byte) {
	t.Helper()
	return doCall(t, ts.hc, method, ts.base+path, body)
}

func doCall(t testing.TB, hc *http.Client, method, url, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// apiErr decodes an error answer, checking its exact shape.
func apiErr(t testing.TB, b []byte) (code, msg string) {
	t.Helper()
	var m map[string]map[string]string
	require.NoError(t, json.Unmarshal(b, &m), "body: %s", b)
	require.Len(t, m, 1, "body: %s", b)
	e, ok := m["error"]
	require.True(t, ok, "body: %s", b)
	require.Len(t, e, 2, "body: %s", b)
	require.NotEmpty(t, e["code"], "body: %s", b)
	require.NotEmpty(t, e["message"], "body: %s", b)
	return e["code"], e["message"]
}

// fields decodes a JSON object answer and checks it has exactly the given members.
func fields(t testing.TB, b []byte, names ...string) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(b, &m), "body: %s", b)
	got := make([]string, 0, len(m))
	for k := range m {
		got = append(got, k)
	}
	require.ElementsMatch(t, names, got, "body: %s", b)
	return m
}

func str(t testing.TB, raw json.RawMessage) string {
	t.Helper()
	var s string
	require.NoError(t, json.Unmarshal(raw, &s))
	return s
}
