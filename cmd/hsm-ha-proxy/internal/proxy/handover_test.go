package proxy

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/handover"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// TestHandOverKeepAliveConnections: a hot upgrade passes the idle keep-alive connections to the new server,
// where the next request on each arrives over the same connection; a request in flight finishes in the
// old server first, then its connection moves too. The old socket file stays (the new process serves on it).
func TestHandOverKeepAliveConnections(t *testing.T) {
	cfg := fakeConfig(sidecarconfig.ClientConfig{Name: "me", UnixUID: intp(os.Getuid()), Partitions: []string{"payments"}})
	be := newFakeBackend(t)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	be.keys["payments"]["ec-key"].hook = func(ctx context.Context) error {
		entered <- struct{}{}
		<-release
		return nil
	}
	old := startUnix(t, cfg, be)
	idle, busy := unixHTTPClient(old.addr), unixHTTPClient(old.addr)
	status, _ := doCall(t, idle, http.MethodGet, "http://sidecar/v1/partitions/payments/keys", "")
	require.Equal(t, http.StatusOK, status)

	inFlight := make(chan int, 1)
	go func() {
		status, _ := doCall(t, busy, http.MethodPost, "http://sidecar/v1/partitions/payments/keys/ec-key/sign",
			`{"digest":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","algorithm":"ECDSA_SHA256"}`)
		inFlight <- status
	}()
	<-entered

	pf, cf, err := handover.Pair()
	require.NoError(t, err)
	send, err := handover.Open(pf)
	require.NoError(t, err)
	recv, err := handover.Open(cf)
	require.NoError(t, err)
	defer recv.Close()
	be.keys["payments"]["ec-key"].hook = nil // the new server's calls do not block (set before it serves)
	next := startUnix(t, cfg, be)
	var adopted atomic.Int32
	go func() {
		for {
			m, err := recv.Recv()
			if err != nil {
				return
			}
			assert.Equal(t, handover.KindHTTPConn, m.Kind)
			if assert.NoError(t, next.srv.Adopt(m.File)) {
				adopted.Add(1)
			}
		}
	}()
	handed := make(chan int, 1)
	go func() {
		n, err := old.srv.HandOver(context.Background(), send)
		assert.NoError(t, err)
		handed <- n
	}()
	close(release)
	assert.Equal(t, http.StatusOK, <-inFlight, "the request in flight finished in the old server")
	assert.Equal(t, 2, <-handed, "the idle connection and, once answered, the busy one")
	send.Close()

	for _, hc := range []*http.Client{idle, busy} {
		var reused bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://sidecar/v1/partitions/payments/keys/rsa-key", nil)
		require.NoError(t, err)
		resp, err := hc.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.True(t, reused, "the same connection")
	}
	assert.Equal(t, int32(2), adopted.Load())
	assert.Equal(t, 2, strings.Count(next.logs.String(), `"route":"GET /v1/partitions/{p}/keys/{label}"`),
		"the new server answered both:\n%s", next.logs.String())
	assert.NotContains(t, old.logs.String(), `"route":"GET /v1/partitions/{p}/keys/{label}"`)
	require.NoError(t, old.stop())
	_, err = os.Stat(old.addr)
	assert.NoError(t, err, "the old server left the socket file")
}
