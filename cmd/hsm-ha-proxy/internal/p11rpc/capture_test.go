//go:build linux

package p11rpc

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCaptureGolden regenerates testdata/golden/*.txt: the frames the real p11-kit client (the Debian 12
// p11-kit-client.so, p11-kit 0.24.1, driven by pkcs11-tool) and a real `p11-kit server` over SoftHSM
// exchange, recorded by a relay between them. It runs only with P11RPC_CAPTURE=1:
//
//	P11RPC_CAPTURE=1 go test -run TestCaptureGolden -count=1 ./cmd/hsm-ha-proxy/internal/p11rpc/
//
// With P11RPC_CAPTURE_V2=DIR it also writes testdata/golden-v2/*.txt from a p11-kit 0.26.4 client and
// server (protocol version 2): DIR is a directory holding a p11-kit 0.26.4 p11-kit-client.so and
// p11-kit-remote, built by whoever regenerates the vectors; nothing in this repository builds them
// (the relay runs DIR/p11-kit/p11-kit-remote per connection, as `p11-kit server` would).
//
// Keys are generated afresh, so every run produces different signatures; the golden tests only need the
// bytes to be real. Every signature and plaintext is checked here with the Go standard library before the
// files are written.
func TestCaptureGolden(t *testing.T) {
	if os.Getenv("P11RPC_CAPTURE") == "" {
		t.Skip("set P11RPC_CAPTURE=1 to regenerate testdata/golden from the real p11-kit client and server")
	}
	env := newCaptureEnv(t)
	env.capture(t, "golden", "p11-kit 0.24.1 p11-kit-client.so <-> p11-kit server", env.client, env.dialServer, nil)
	if dir := os.Getenv("P11RPC_CAPTURE_V2"); dir != "" {
		client := filepath.Join(dir, "p11-kit", "p11-kit-client.so")
		env.capture(t, "golden-v2", "p11-kit 0.26.4 p11-kit-client.so <-> p11-kit-remote 0.26.4",
			client, env.spawnRemote(filepath.Join(dir, "p11-kit", "p11-kit-remote")), nil)
		// p11-kit issue #733: the 0.24.1 server answers version 0, the 0.26.4 client still sends its
		// mechanisms in the version 2 encoding, and the server cannot parse them: the signs fail.
		env.capture(t, "golden-issue733", "p11-kit 0.26.4 p11-kit-client.so <-> p11-kit server 0.24.1",
			client, env.dialServer, []string{"sign-ecdsa", "sign-rsa-pss"})
	}
}

// capture runs the pkcs11-tool steps through client, each connection relayed to a server that connect
// opens, and writes testdata/<outDir>. failing names steps that are expected to fail (and only those run);
// nil runs all, expecting them to succeed.
func (env *captureEnv) capture(t *testing.T, outDir, what, client string, connect func() (io.ReadWriteCloser, error), failing []string) {
	if err := os.MkdirAll(filepath.Join("testdata", outDir), 0o755); err != nil {
		t.Fatal(err)
	}
	env.relay.connect = connect
	dir := t.TempDir()
	digest := sha256.Sum256([]byte("pkcs11-ha golden vectors"))
	digestFile := filepath.Join(dir, "digest.bin")
	writeFile(t, digestFile, digest[:])
	secret := []byte("the OAEP plaintext")
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, &env.rsaKey.PublicKey, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctFile := filepath.Join(dir, "ct.bin")
	writeFile(t, ctFile, ct)
	out := filepath.Join(dir, "out.bin")
	login := []string{"--login", "--pin", captureUserPIN}

	steps := []struct {
		name  string
		args  []string
		check func(out []byte) error
	}{
		{"show-info", []string{"-I"}, nil},
		{"list-slots", []string{"-L"}, nil},
		{"list-mechanisms", []string{"-M"}, nil},
		{"list-objects", []string{"-O"}, nil},
		{"list-objects-login", append(login, "-O"), nil},
		{"sign-ecdsa", append(login, "--sign", "-m", "ECDSA", "--id", "01", "-i", digestFile, "-o", out),
			func(sig []byte) error {
				if len(sig) != 64 {
					return fmt.Errorf("ECDSA signature of %d bytes", len(sig))
				}
				r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
				if !ecdsa.Verify(&env.ecKey.PublicKey, digest[:], r, s) {
					return errors.New("ECDSA signature does not verify")
				}
				return nil
			}},
		{"sign-rsa-pss", append(login, "--sign", "-m", "RSA-PKCS-PSS", "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256",
			"--salt-len", "32", "--id", "02", "-i", digestFile, "-o", out),
			func(sig []byte) error {
				return rsa.VerifyPSS(&env.rsaKey.PublicKey, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: 32})
			}},
		{"decrypt-rsa-oaep", append(login, "--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", "SHA-1", "--mgf", "MGF1-SHA1",
			"--id", "02", "-i", ctFile, "-o", out),
			func(pt []byte) error {
				if !bytes.Equal(pt, secret) {
					return fmt.Errorf("OAEP plaintext %q, want %q", pt, secret)
				}
				return nil
			}},
		{"generate-random", []string{"--generate-random", "16", "-o", out},
			func(rnd []byte) error {
				if len(rnd) != 16 {
					return fmt.Errorf("%d random bytes, want 16", len(rnd))
				}
				return nil
			}},
		{"wrong-pin", []string{"--login", "--pin", "0000", "-O"}, nil},
	}
	for _, st := range steps {
		if failing != nil && !slices.Contains(failing, st.name) {
			continue
		}
		_ = os.Remove(out)
		rec := env.relay.start()
		toolErr := env.runTool(client, st.args...)
		conns := env.relay.finish(t)
		if failing != nil {
			if toolErr == nil {
				t.Fatalf("%s/%s: pkcs11-tool succeeded", outDir, st.name)
			}
		} else if st.name != "wrong-pin" && toolErr != nil {
			t.Fatalf("%s: pkcs11-tool: %v", st.name, toolErr)
		}
		if st.check != nil && failing == nil {
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if err := st.check(got); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		if conns != 1 {
			t.Fatalf("%s: %d connections, want 1", st.name, conns)
		}
		header := fmt.Sprintf("# pkcs11-tool %s\n# %s over SoftHSM, recorded by TestCaptureGolden.\n", redactPIN(st.args), what)
		writeFile(t, filepath.Join("testdata", outDir, st.name+".txt"), []byte(header+strings.Join(rec.lines(), "\n")+"\n"))
	}
}

const (
	captureToken    = "golden"
	captureUserPIN  = "1234" // a throwaway test token's PIN
	captureSOPIN    = "5678"
	captureRelayMax = 1 << 20
)

func redactPIN(args []string) string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "--pin" {
			out[i+1] = "***"
		}
		if strings.HasPrefix(out[i+1], "/") {
			out[i+1] = filepath.Base(out[i+1])
		}
	}
	return strings.Join(out, " ")
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// captureEnv is a SoftHSM token with an EC P-256 key (id 01) and an RSA-2048 key (id 02) behind a
// `p11-kit server`, and a recording relay in front of it.
type captureEnv struct {
	t              *testing.T
	client         string // the system's p11-kit-client.so
	softhsm        string // libsofthsm2.so
	conf           string // SOFTHSM2_CONF
	serverSock     string
	relayPath      string
	relay          *recorder
	ecKey          *ecdsa.PrivateKey
	rsaKey         *rsa.PrivateKey
	pkcs11ToolPath string
}

func firstExisting(t *testing.T, envVar string, globs ...string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	for _, g := range globs {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return m[0]
		}
	}
	t.Fatalf("none of %v found (set %s)", globs, envVar)
	return ""
}

func newCaptureEnv(t *testing.T) *captureEnv {
	softhsm := firstExisting(t, "SOFTHSMTEST_SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/*/softhsm/libsofthsm2.so")
	client := firstExisting(t, "SOFTHSMTEST_P11KIT_CLIENT", "/usr/lib/*/pkcs11/p11-kit-client.so", "/usr/lib/pkcs11/p11-kit-client.so")
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	writeFile(t, conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"))
	util := func(args ...string) {
		cmd := exec.Command("softhsm2-util", args...)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("softhsm2-util %s: %v: %s", args[0], err, out)
		}
	}
	util("--init-token", "--free", "--label", captureToken, "--pin", captureUserPIN, "--so-pin", captureSOPIN)
	e := &captureEnv{t: t, client: client, softhsm: softhsm, conf: conf, pkcs11ToolPath: tool}
	if e.ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if e.rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		key       crypto.Signer
		label, id string
	}{{e.ecKey, "ec-key", "01"}, {e.rsaKey, "rsa-key", "02"}} {
		der, err := x509.MarshalPKCS8PrivateKey(k.key)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, k.label+".pem")
		writeFile(t, p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		util("--import", p, "--token", captureToken, "--label", k.label, "--id", k.id, "--pin", captureUserPIN)
	}

	serverSock := filepath.Join(dir, "server.sock")
	srv := exec.Command("p11-kit", "server", "-f", "-n", serverSock, "--provider", softhsm, "pkcs11:token="+captureToken)
	srv.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var srvLog bytes.Buffer
	srv.Stdout, srv.Stderr = &srvLog, &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The server forks a p11-kit-remote per connection: signal the whole group we created.
		_ = syscall.Kill(-srv.Process.Pid, syscall.SIGTERM)
		_ = srv.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", serverSock); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("p11-kit server did not listen: %s", srvLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.serverSock = serverSock
	e.relayPath = filepath.Join(dir, "relay.sock")
	e.relay = newRecorder(t, e.relayPath)
	return e
}

func (e *captureEnv) dialServer() (io.ReadWriteCloser, error) { return net.Dial("unix", e.serverSock) }

// spawnRemote returns a connect function that runs remote (p11-kit-remote) on the token, speaking the
// protocol on its stdin and stdout.
func (e *captureEnv) spawnRemote(remote string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		cmd := exec.Command(remote, "-p", e.softhsm, "pkcs11:token="+captureToken)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+e.conf)
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		return &procConn{cmd: cmd, in: in, out: out}, nil
	}
}

// procConn is a child process's stdin and stdout as one connection.
type procConn struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.Reader
	once sync.Once
}

func (p *procConn) Read(b []byte) (int, error)  { return p.out.Read(b) }
func (p *procConn) Write(b []byte) (int, error) { return p.in.Write(b) }

// Close ends the child: EOF on its stdin makes p11-kit-remote exit.
func (p *procConn) Close() error {
	p.once.Do(func() {
		_ = p.in.Close()
		_ = p.cmd.Wait()
	})
	return nil
}

func (e *captureEnv) runTool(client string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.pkcs11ToolPath, append([]string{"--module", client}, args...)...)
	cmd.Env = append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+e.relayPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// recorder is a relay that copies bytes between the client and the server unchanged and logs each
// handshake byte and frame, in order, as text lines: "hs c|s HEX", "c|s CODE OPTIONS BODY" (hex, "-" for
// empty).
type recorder struct {
	t       *testing.T
	ln      net.Listener
	connect func() (io.ReadWriteCloser, error) // opens the server side of a relayed connection
	mu      sync.Mutex
	log     []string
	conns   int
	wg      sync.WaitGroup
}

func newRecorder(t *testing.T, path string) *recorder {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{t: t, ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.serve(c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		r.wg.Wait()
	})
	return r
}

func (r *recorder) start() *recorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log, r.conns = nil, 0
	return r
}

// finish waits for the step's connections to end and returns how many there were.
func (r *recorder) finish(t *testing.T) int {
	waited := make(chan struct{})
	go func() { r.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("relay connections did not end")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns
}

func (r *recorder) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

func (r *recorder) add(line string) {
	r.mu.Lock()
	r.log = append(r.log, line)
	r.mu.Unlock()
}

func (r *recorder) serve(c net.Conn) {
	s, err := r.connect()
	if err != nil {
		r.t.Errorf("relay: %v", err)
		_ = c.Close()
		return
	}
	r.mu.Lock()
	r.conns++
	r.mu.Unlock()
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.pipe(c, s, "c"); _ = s.Close() }()
	go func() { defer r.wg.Done(); r.pipe(s, c, "s"); _ = c.Close() }()
}

// pipe copies one direction: the handshake byte, then whole frames, logging each before forwarding it.
func (r *recorder) pipe(from io.Reader, to io.Writer, dir string) {
	var hs [1]byte
	if _, err := io.ReadFull(from, hs[:]); err != nil {
		return
	}
	r.add(fmt.Sprintf("hs %s %02x", dir, hs[0]))
	if _, err := to.Write(hs[:]); err != nil {
		return
	}
	for {
		var h [12]byte
		if _, err := io.ReadFull(from, h[:]); err != nil {
			return
		}
		olen, blen := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint32(h[8:])
		if uint64(olen)+uint64(blen) > captureRelayMax {
			r.t.Errorf("relay: %s frame of %d+%d bytes", dir, olen, blen)
			return
		}
		rest := make([]byte, int(olen)+int(blen))
		if _, err := io.ReadFull(from, rest); err != nil {
			return
		}
		r.add(fmt.Sprintf("%s %08x %s %s", dir, binary.BigEndian.Uint32(h[:]), hexOrDash(rest[:olen]), hexOrDash(rest[olen:])))
		if _, err := to.Write(append(h[:], rest...)); err != nil {
			return
		}
	}
}

func hexOrDash(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return hex.EncodeToString(b)
}
