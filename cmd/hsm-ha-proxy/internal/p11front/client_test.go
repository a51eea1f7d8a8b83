package p11front

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// frontT is a running front end for one test.
type frontT struct {
	srv    *Server
	socket string
	logs   *syncBuffer
	reg    *prometheus.Registry
	// stop ends Serve (as a signal would) and returns its result; the test's cleanup calls it too.
	stop func() error
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortDir is a temporary directory short enough for a socket path.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "p11f")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startFront serves be to the peers auth grants, on a fresh socket, until the test ends.
func startFront(t testing.TB, be Backend, auth Authorizer, partitions []string) *frontT {
	t.Helper()
	return startFrontWith(t, be, auth, Options{Partitions: partitions}, "")
}

// startFrontWith is startFront with options and a socket group ("": mode 0600).
func startFrontWith(t testing.TB, be Backend, auth Authorizer, opts Options, group string) *frontT {
	t.Helper()
	f := &frontT{socket: filepath.Join(shortDir(t), "p11.sock"), logs: &syncBuffer{}, reg: prometheus.NewRegistry()}
	ln, err := Listen("unix://"+f.socket, group)
	require.NoError(t, err)
	opts.Registerer = f.reg
	opts.Logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.srv = New(be, auth, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	f.stop = func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() { require.NoError(t, f.stop()) })
	return f
}

// envMu serialises loading p11-kit-client.so: it reads P11_KIT_SERVER_ADDRESS from the process
// environment when the module is loaded.
var envMu sync.Mutex

// openClient loads the stock p11-kit-client.so for the front end at socket and initialises it; it is
// finalised when the test ends.
func openClient(t testing.TB, socket string) *pkcs11.Ctx {
	t.Helper()
	return openClientModule(t, clientModule(t), socket)
}

// openClientModule is openClient with another p11-kit-client.so (a newer p11-kit's).
func openClientModule(t testing.TB, module, socket string) *pkcs11.Ctx {
	t.Helper()
	envMu.Lock()
	old, had := os.LookupEnv("P11_KIT_SERVER_ADDRESS")
	os.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+socket)
	p := pkcs11.New(module)
	if had {
		os.Setenv("P11_KIT_SERVER_ADDRESS", old)
	} else {
		os.Unsetenv("P11_KIT_SERVER_ADDRESS")
	}
	envMu.Unlock()
	require.NotNil(t, p, "loading %s", module)
	require.NoError(t, p.Initialize())
	t.Cleanup(func() {
		_ = p.Finalize()
		p.Destroy()
	})
	return p
}

// openSession opens a session on the slot of the token labelled label.
func openSession(t testing.TB, p *pkcs11.Ctx, label string) pkcs11.SessionHandle {
	t.Helper()
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	for _, sl := range slots {
		ti, err := p.GetTokenInfo(sl)
		require.NoError(t, err)
		if ti.Label == label {
			s, err := p.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION)
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.CloseSession(s) })
			return s
		}
	}
	t.Fatalf("no token %q", label)
	return 0
}

// findKey returns the handle of the object of class with label.
func findKey(t testing.TB, p *pkcs11.Ctx, s pkcs11.SessionHandle, class uint, label string) pkcs11.ObjectHandle {
	t.Helper()
	require.NoError(t, p.FindObjectsInit(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}))
	objs, _, err := p.FindObjects(s, 10)
	require.NoError(t, err)
	require.NoError(t, p.FindObjectsFinal(s))
	require.Len(t, objs, 1, "objects of class %d labelled %q", class, label)
	return objs[0]
}
