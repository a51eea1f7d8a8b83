package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarclient"
)

// The applications of the hot-upgrade and worker-fault tests: each signs continuously, verifies every
// signature with the Go standard library (the external ones print theirs) and counts.

// appStats is what one application saw.
type appStats struct {
	name string

	mu       sync.Mutex
	ok       int
	failed   int
	bad      int
	errs     []string        // the first few failures
	lat      []time.Duration // each successful call's latency
	sessions map[string]int  // PyKCS11: session handle and state -> calls
}

func newAppStats(name string) *appStats { return &appStats{name: name, sessions: map[string]int{}} }

// record counts one call: err is the call's failure, bad a signature that did not verify.
func (a *appStats) record(lat time.Duration, err error, bad bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case err != nil:
		a.failed++
		if len(a.errs) < 5 {
			a.errs = append(a.errs, err.Error())
		}
	case bad:
		a.bad++
	default:
		a.ok++
		a.lat = append(a.lat, lat)
	}
}

func (a *appStats) okCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ok
}

// summary is the counts and the latency figures: p50 and the maximum, which is the upgrade blip when
// upgrades happened during the run.
func (a *appStats) summary() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	lat := slices.Clone(a.lat)
	slices.Sort(lat)
	var p50, top time.Duration
	if len(lat) > 0 {
		p50, top = lat[len(lat)/2], lat[len(lat)-1]
	}
	return fmt.Sprintf("%-14s %6d ok %3d failed %3d bad signatures   p50 %8v   max %8v", a.name, a.ok, a.failed, a.bad,
		p50.Round(time.Microsecond), top.Round(time.Microsecond))
}

func (a *appStats) maxLatency() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.lat) == 0 {
		return 0
	}
	return slices.Max(a.lat)
}

// app is a running application: stop ends it and waits for it.
type app struct {
	stats *appStats
	stop  func()
}

// appSet is the applications of one test, stopped once (by stop or when the test ends).
type appSet struct {
	apps []*app
	once sync.Once
}

func newAppSet(t *testing.T, apps ...*app) *appSet {
	s := &appSet{apps: apps}
	t.Cleanup(s.stop)
	return s
}

// startApps starts the four applications on r's sidecar: PyKCS11, Java's SunPKCS11 and crypto11 through the
// stock p11-kit-client.so (RSA), and the Go client over the HTTP API (ECDSA); it returns once each has
// signed 20 times.
func startApps(t *testing.T, r *upgradeRig) *appSet {
	t.Helper()
	rsaPub, ecPub := r.topo.Keys["rsa-key"].Public(), r.topo.Keys["ec-key"].Public()
	s := newAppSet(t,
		startPyKCS11App(t, r.module, r.p11sock, rsaPub),
		startJavaApp(t, r.module, r.p11sock, rsaPub),
		startCrypto11App(t, r.module, r.p11sock, rsaPub),
		startHTTPApp(t, r.sock, ecPub),
	)
	s.waitProgress(t, 20)
	return s
}

func (s *appSet) stop() {
	s.once.Do(func() {
		for _, a := range s.apps {
			a.stop()
		}
	})
}

// waitProgress waits until every application has made n more successful calls.
func (s *appSet) waitProgress(t *testing.T, n int) {
	t.Helper()
	base := make([]int, len(s.apps))
	for i, a := range s.apps {
		base[i] = a.stats.okCount()
	}
	for i, a := range s.apps {
		require.Eventually(t, func() bool { return a.stats.okCount() >= base[i]+n }, time.Minute, 5*time.Millisecond,
			"%s makes progress", a.stats.name)
	}
}

// check stops the applications and asserts what each saw: no failed call, no bad signature, and PyKCS11 (if
// it ran) kept one session handle, logged in (CKS_RO_USER_FUNCTIONS = 1), all along. It returns the slowest
// call of any application.
func (s *appSet) check(t *testing.T) time.Duration {
	t.Helper()
	s.stop()
	var slowest time.Duration
	for _, a := range s.apps {
		t.Log(a.stats.summary())
		assert.Zero(t, a.stats.failed, "%s: failed calls: %v", a.stats.name, a.stats.errs)
		assert.Zero(t, a.stats.bad, "%s: bad signatures", a.stats.name)
		assert.NotZero(t, a.stats.ok, "%s: signed", a.stats.name)
		slowest = max(slowest, a.stats.maxLatency())
		if a.stats.name != pykcs11Name {
			continue
		}
		assert.Len(t, a.stats.sessions, 1, "PyKCS11 kept one session handle: %v", a.stats.sessions)
		for k := range a.stats.sessions {
			assert.True(t, strings.HasSuffix(k, " state 1"), "logged in: %s", k)
		}
	}
	return slowest
}

// frontEndLogins is how many C_Login calls the serving process's PKCS#11 front end has had (applications
// logging in, all partitions).
func frontEndLogins(t *testing.T, sock string) float64 {
	t.Helper()
	var n float64
	for _, m := range scrapeFamilies(t, sock)["hsm_ha_proxy_pkcs11_calls_total"].GetMetric() {
		if labelOf(m, "call") == "C_Login" {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

// scrapeFamilies fetches and parses the sidecar's /metrics on its unix socket.
func scrapeFamilies(t *testing.T, sock string) map[string]*dto.MetricFamily {
	t.Helper()
	text, err := scrape(sock)
	require.NoError(t, err)
	_, body, ok := strings.Cut(text, "\r\n\r\n")
	require.True(t, ok, "an HTTP response: %q", text)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return mfs
}

// labelOf is the value of m's label name ("" without it).
func labelOf(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// verifyRSA checks an RSA PKCS#1 v1.5 SHA-256 signature of msg.
func verifyRSA(pub crypto.PublicKey, msg string, sig []byte) bool {
	d := sha256.Sum256([]byte(msg))
	return rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, d[:], sig) == nil
}

// verifyDigest checks a signature of a SHA-256 digest as crypto.Signer makes it (ASN.1 for ECDSA).
func verifyDigest(pub crypto.PublicKey, digest, sig []byte) bool {
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(pk, crypto.SHA256, digest, sig) == nil
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pk, digest, sig)
	}
	return false
}

// signLoop runs sign from workers goroutines until stopped.
func signLoop(name string, workers int, pub crypto.PublicKey, sign func(digest []byte) ([]byte, error)) *app {
	st := newAppStats(name)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				d := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", name, w, i))
				began := time.Now()
				sig, err := sign(d[:])
				st.record(time.Since(began), err, err == nil && !verifyDigest(pub, d[:], sig))
			}
		})
	}
	return &app{stats: st, stop: func() { close(done); wg.Wait() }}
}

// startHTTPApp signs through the sidecar's HTTP API with the Go client (kept-alive unix connections).
func startHTTPApp(t *testing.T, sock string, pub crypto.PublicKey) *app {
	c := sidecarclient.Dial(sock)
	t.Cleanup(func() { c.Close() })
	key := c.KeyWithPublic("payments", "ec-key", pub)
	return signLoop("sidecarclient", 4, pub, func(d []byte) ([]byte, error) {
		return key.SignContext(context.Background(), d, crypto.SHA256)
	})
}

// startCrypto11App signs with crypto11 through the stock p11-kit-client.so.
func startCrypto11App(t *testing.T, module, p11sock string, pub crypto.PublicKey) *app {
	t.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+p11sock)
	c11, err := crypto11.Configure(&crypto11.Config{Path: module, TokenLabel: "payments", Pin: "not-the-partition-pin"})
	require.NoError(t, err)
	s, err := c11.FindKeyPair(nil, []byte("rsa-key"))
	require.NoError(t, err)
	require.NotNil(t, s)
	a := signLoop("crypto11", 2, pub, func(d []byte) ([]byte, error) { return s.Sign(rand.Reader, d, crypto.SHA256) })
	stop := a.stop
	a.stop = func() {
		stop()
		require.NoError(t, c11.Close())
	}
	return a
}

// startLineApp runs an external application that prints "READY", then "OK i micros ... signature" or
// "ERR i ..." per call; check verifies the fields after "OK i micros". A line on its standard input stops it.
func startLineApp(t *testing.T, name string, env []string, check func(st *appStats, i int, fields []string) bool,
	prog string, args ...string) *app {
	t.Helper()
	st := newAppStats(name)
	cmd := exec.Command(prog, args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "READY":
				close(ready)
			case len(f) >= 2 && f[0] == "ERR":
				st.record(0, errors.New(sc.Text()), false)
			case len(f) >= 4 && f[0] == "OK":
				i, _ := strconv.Atoi(f[1])
				us, _ := strconv.Atoi(f[2])
				st.record(time.Duration(us)*time.Microsecond, nil, !check(st, i, f[3:]))
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case <-ready:
	case <-done:
		t.Fatalf("%s ended before it was ready: %s", name, stderr.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s not ready: %s", name, stderr.String())
	}
	return &app{stats: st, stop: func() {
		_, _ = io.WriteString(stdin, "stop\n")
		stdin.Close()
		<-done
		if err := cmd.Wait(); err != nil {
			st.record(0, fmt.Errorf("%s exited: %v: %s", name, err, stderr.String()), false)
		}
	}}
}

const pykcs11Name = "PyKCS11"

// startPyKCS11App runs testdata/pykcs11_signer.py (PyKCS11 through the stock p11-kit-client.so): one session
// logged in once, signing with CKM_SHA256_RSA_PKCS; it records the session handle and state of every call.
func startPyKCS11App(t *testing.T, module, p11sock string, pub crypto.PublicKey) *app {
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import PyKCS11").CombinedOutput(); err != nil {
		t.Skipf("PyKCS11 is not installed (Debian python3-pykcs11; make deps installs it): %s", out)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "pykcs11_signer.py"))
	require.NoError(t, err)
	env := append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+p11sock)
	return startLineApp(t, pykcs11Name, env, func(st *appStats, i int, f []string) bool {
		if len(f) != 3 {
			return false
		}
		st.mu.Lock()
		st.sessions["session "+f[0]+" state "+f[1]]++
		st.mu.Unlock()
		sig, err := hex.DecodeString(f[2])
		return err == nil && verifyRSA(pub, fmt.Sprintf("message %d", i), sig)
	}, python, script, module, "payments", "rsa-key")
}

// startJavaApp runs testdata/SignLoop.java (Java's SunPKCS11 through the stock p11-kit-client.so).
func startJavaApp(t *testing.T, module, p11sock string, pub crypto.PublicKey) *app {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("java is not installed (Debian openjdk-17-jdk-headless; make deps installs it)")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pkcs11-ha.cfg")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, "name = pkcs11-ha\nlibrary = %s\nslotListIndex = 0\n", module), 0o600))
	src, err := filepath.Abs(filepath.Join("testdata", "SignLoop.java"))
	require.NoError(t, err)
	env := append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+p11sock)
	return startLineApp(t, "Java SunPKCS11", env, func(_ *appStats, i int, f []string) bool {
		sig, err := base64.StdEncoding.DecodeString(f[len(f)-1])
		return err == nil && verifyRSA(pub, fmt.Sprintf("message %d", i), sig)
	}, java, src, cfg, "rsa-key")
}
