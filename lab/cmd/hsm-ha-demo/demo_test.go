package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// TestDemo builds hsm-ha-demo and hsm-ha-proxy into one directory, as `make run` does, and runs the demo
// non-interactively with a compressed script (one step every 3 s): it finds the sidecar beside itself,
// exits 0 with no failed operation, the curl command it prints signs (checked with crypto/ecdsa while the
// demo is up) and so does its openssl line, its pkcs11-tool -L lists its partitions and its pkcs11-tool
// signature verifies (crypto/ecdsa, then openssl), no process it started nor its temporary directory is left,
// and it draws the run into --report (a directory it creates).
func TestDemo(t *testing.T) {
	report := filepath.Join(t.TempDir(), "report")
	// Steps of 3 s: with gatePolicy a paused device's calls are left after 1 s, and each step must see its
	// effect before the next.
	run := startDemo(t, buildBinaries(t), "--step", "3s", "--duration", "24s", "--workers", "4", "--rate", "150",
		"--report", report, "--policy", gatePolicy)

	// The header: the curl command, the public key, the openssl line and the pkcs11-tool commands, all
	// usable while the demo runs.
	p := readHeader(t, run.lines)
	go func() { // keep draining
		for range run.lines {
		}
	}()
	pub := demoPublicKey(t, p.pubPath)
	checkPrintedCommands(t, p, pub)
	checkPkcs11Commands(t, p, pub)

	select {
	case err := <-run.exited:
		run.finished = true
		require.NoError(t, err, "the demo exits 0")
	case <-time.After(90 * time.Second):
		t.Fatal("the demo did not stop after its --duration")
	}
	out := run.stdout.String()
	checkScript(t, out)
	checkNothingLeft(t, out)
	checkPictures(t, out, report, "1: kill eastus-1", "2: pause eastus-2 (hung)", "3: resume eastus-2, restart eastus-1",
		"4: back on the local pair", regionOutBand)
}

// gatePolicy gives the demo's sidecar attempt deadlines no healthy device misses on a loaded host, so that
// "no failed operation" depends on the script's faults alone (make test is a gate; the default deadlines'
// timing is make chaos's). The killed and the paused device still fail over.
const gatePolicy = "attempt_timeout: {local: 1s, dr: 2s}\nrequest_timeout: 9s"

// demoRun is the demo process of a test.
type demoRun struct {
	lines          chan string // stdout lines, as long as the reader keeps up
	stdout, stderr softhsmtest.LogBuffer
	exited         chan error
	finished       bool // the test saw the exit: the cleanup need not stop the demo
	proc           *os.Process
}

// startDemo starts the demo binary; the cleanup stops it (SIGINT, then SIGKILL) if the test did not see
// it exit, and shows its output when the test failed.
func startDemo(t *testing.T, bin string, args ...string) *demoRun {
	run := &demoRun{lines: make(chan string, 1024), exited: make(chan error, 1)}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &run.stderr
	pipe, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	run.proc = cmd.Process
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(run.lines)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			_, _ = run.stdout.Write([]byte(sc.Text() + "\n"))
			select {
			case run.lines <- sc.Text():
			default:
			}
		}
		_, _ = io.Copy(io.Discard, pipe)
	}()
	go func() {
		<-readDone
		run.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if !run.finished {
			_ = cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-run.exited:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-run.exited
			}
		}
		if t.Failed() {
			t.Logf("demo stdout:\n%s\ndemo stderr:\n%s", run.stdout.String(), run.stderr.String())
		}
	})
	return run
}

// printed is what the demo's header offers to run while it is up.
type printed struct {
	curlLine, verifyLine, pubPath string   // the HTTP API: curl, and curl piped into openssl
	p11List, p11Sign              string   // the PKCS#11 front end: pkcs11-tool -L, and pkcs11-tool --sign && openssl
	partitions                    []string // the partitions the header names
}

// readHeader reads the demo's header up to the curl commands, the public key's path and the pkcs11-tool
// commands.
func readHeader(t *testing.T, lines <-chan string) printed {
	pubRE := regexp.MustCompile(`^Public key: (\S+)\. `)
	partsRE := regexp.MustCompile(`^\s*partitions: (.+), each with `)
	var p printed
	timeout := time.After(90 * time.Second)
	for p.curlLine == "" || p.verifyLine == "" || p.pubPath == "" || p.p11List == "" || p.p11Sign == "" {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "the demo ended before printing its commands")
			switch s := strings.TrimSpace(l); {
			case strings.HasPrefix(s, "curl ") && strings.Contains(s, "openssl dgst"):
				p.verifyLine = s
			case strings.HasPrefix(s, "curl "):
				p.curlLine = s
			case strings.HasPrefix(s, "P11_KIT_SERVER_ADDRESS=") && strings.HasSuffix(s, " -L"):
				p.p11List = s
			case strings.HasPrefix(s, "P11_KIT_SERVER_ADDRESS=") && strings.Contains(s, " --sign "):
				p.p11Sign = s
			}
			if m := pubRE.FindStringSubmatch(l); m != nil {
				p.pubPath = m[1]
			}
			if m := partsRE.FindStringSubmatch(l); m != nil {
				p.partitions = strings.Split(m[1], ", ")
			}
		case <-timeout:
			t.Fatal("the demo's commands were not all printed within 90 s")
		}
	}
	return p
}

// demoPublicKey reads the public key the header points to.
func demoPublicKey(t *testing.T, path string) *ecdsa.PublicKey {
	pemBytes, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(pemBytes)
	require.NotNil(t, blk)
	pubAny, err := x509.ParsePKIXPublicKey(blk.Bytes)
	require.NoError(t, err)
	pub, ok := pubAny.(*ecdsa.PublicKey)
	require.True(t, ok, "the demo key is ECDSA, got %T", pubAny)
	return pub
}

// checkPrintedCommands runs the printed curl command and openssl line while the demo is up: the
// signature verifies with crypto/ecdsa against the printed public key, and openssl says so too.
func checkPrintedCommands(t *testing.T, p printed, pub *ecdsa.PublicKey) {
	assert.Contains(t, p.curlLine, "--unix-socket ")
	assert.Contains(t, p.curlLine, `"algorithm":"ECDSA_SHA256"`)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Log("no curl: the printed command is not run")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", p.curlLine).Output()
	require.NoError(t, err, "running the printed curl command")
	var resp struct{ Signature, Device string }
	require.NoError(t, json.Unmarshal(out, &resp), "curl answered %s", out)
	sig, err := base64.StdEncoding.DecodeString(resp.Signature)
	require.NoError(t, err)
	digest := sha256.Sum256([]byte(demoMessage))
	assert.True(t, ecdsa.VerifyASN1(pub, digest[:], sig), "the signature of the printed curl command verifies")
	assert.NotEmpty(t, resp.Device)

	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.CommandContext(ctx, "sh", "-c", p.verifyLine).CombinedOutput()
		require.NoError(t, err, "the printed openssl line: %s", out)
		assert.Contains(t, string(out), "Verified OK")
	}
}

// checkPkcs11Commands runs the printed pkcs11-tool commands while the demo is up, through the stock
// p11-kit-client.so and the sidecar's PKCS#11 front end: -L lists exactly the demo's partitions, and
// the signature (-o, DER) verifies with crypto/ecdsa against the demo key; then the printed openssl
// check after it says so too.
func checkPkcs11Commands(t *testing.T, p printed, pub *ecdsa.PublicKey) {
	require.NotEmpty(t, p.partitions, "the header names the partitions")
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Log("no pkcs11-tool (Debian package opensc): the printed commands are not run")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", p.p11List).CombinedOutput()
	require.NoError(t, err, "the printed pkcs11-tool -L: %s", out)
	var labels []string
	for _, m := range regexp.MustCompile(`token label\s*:\s*(\S+)`).FindAllStringSubmatch(string(out), -1) {
		labels = append(labels, m[1])
	}
	assert.ElementsMatch(t, p.partitions, labels, "pkcs11-tool -L lists the demo's partitions: %s", out)

	signCmd, opensslCmd, ok := strings.Cut(p.p11Sign, " && ")
	require.True(t, ok, "the signing line is pkcs11-tool ... && openssl ...: %s", p.p11Sign)
	sigPath := regexp.MustCompile(` -o (\S+)`).FindStringSubmatch(signCmd)
	require.NotNil(t, sigPath, "the signing command names its output: %s", signCmd)
	out, err = exec.CommandContext(ctx, "sh", "-c", signCmd).CombinedOutput()
	require.NoError(t, err, "the printed pkcs11-tool --sign: %s", out)
	sig, err := os.ReadFile(sigPath[1])
	require.NoError(t, err)
	digest := sha256.Sum256([]byte(demoMessage))
	assert.True(t, ecdsa.VerifyASN1(pub, digest[:], sig), "the signature pkcs11-tool made through the front end verifies")

	if _, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.CommandContext(ctx, "sh", "-c", opensslCmd).CombinedOutput()
		require.NoError(t, err, "the printed openssl check: %s", out)
		assert.Contains(t, string(out), "Verified OK")
	}
}

// checkScript checks the demo's output: every step and its effect, no failed operation at any step nor
// in the final count, no terminal escapes.
func checkScript(t *testing.T, out string) {
	for _, want := range []string{
		"step 1/4: kill eastus-1",
		"step 2/4: pause eastus-2",
		"seen: DR (westus) serves all the traffic",
		"step 3/4: resume eastus-2 (SIGCONT) and restart eastus-1",
		"eastus-1 restarted in",
		"step 4/4: traffic is back on the local pair",
		"sidecar (pid",
		"devices stopped",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, "\x1b[", "no terminal escapes when stdout is not a terminal")
	failedRE := regexp.MustCompile(`failed ops so far: (\d+)`)
	steps := failedRE.FindAllStringSubmatch(out, -1)
	assert.GreaterOrEqual(t, len(steps), 4, "every step reports the failed operations")
	for _, m := range steps {
		assert.Equal(t, "0", m[1], "failed operations reported by a step")
	}
	done := regexp.MustCompile(`done: (\d+) operations, (\d+) failed`).FindStringSubmatch(out)
	require.NotNil(t, done, "the final count is printed")
	n, _ := strconv.Atoi(done[1])
	assert.Positive(t, n)
	assert.Equal(t, "0", done[2], "no operation failed")
}

// checkNothingLeft: no process of the demo survives it (not the sidecar, not a device server nor a
// member of its process group), and its temporary directory is removed.
func checkNothingLeft(t *testing.T, out string) {
	tmp := regexp.MustCompile(`temp dir:\s+(\S+)`).FindStringSubmatch(out)
	require.NotNil(t, tmp)
	_, err := os.Stat(tmp[1])
	assert.True(t, errors.Is(err, os.ErrNotExist), "the temporary directory %s is removed", tmp[1])
	var pids []int
	for _, m := range regexp.MustCompile(`pid (\d+)`).FindAllStringSubmatch(out, -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	require.GreaterOrEqual(t, len(pids), 6, "the demo prints the pids of the sidecar and of every device server")
	require.Eventually(t, func() bool { return len(survivors(pids, tmp[1])) == 0 }, 5*time.Second, 50*time.Millisecond,
		"no process of the demo survives")
	if left := survivors(pids, tmp[1]); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
}

// survivors lists the live processes (not zombies) that are one of pids, in the process group of one of
// them, or have dir on their command line.
func survivors(pids []int, dir string) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := map[int]bool{}
	for _, p := range pids {
		want[p] = true
	}
	var left []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		pgid, _ := strconv.Atoi(f[2])
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if want[pid] || want[pgid] || strings.Contains(string(cmdline), dir) {
			left = append(left, s[:i+1]+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return left
}

// buildBinaries builds hsm-ha-demo and hsm-ha-proxy into one temporary directory and returns the demo's path.
// It skips the test under -short or without the SoftHSM/p11-kit tools, as every test that runs the demo does.
func buildBinaries(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binaries and runs SoftHSM devices")
	}
	if _, err := softhsmtest.LookupTools(); err != nil {
		t.Skip(err)
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goCmd); err != nil {
			t.Skip("no go command to build the binaries with")
		}
	}
	dir := t.TempDir()
	for _, pkg := range []string{".", "github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy"} {
		out, err := exec.Command(goCmd, "build", "-o", dir+string(os.PathSeparator), pkg).CombinedOutput()
		require.NoError(t, err, "go build %s: %s", pkg, out)
	}
	require.FileExists(t, filepath.Join(dir, proxyName))
	return filepath.Join(dir, "hsm-ha-demo")
}

func TestDemoFlags(t *testing.T) {
	for _, args := range [][]string{{"--workers", "0"}, {"--step", "0s"}, {"--rate", "-1"}, {"extra"}, {"--nope"}} {
		var out, errOut softhsmtest.LogBuffer
		assert.Equal(t, 2, demoMain(args, &out, &errOut), "%v", args)
	}
	var out, errOut softhsmtest.LogBuffer
	assert.Equal(t, 0, demoMain([]string{"-h"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "--no-failover")
	assert.Contains(t, errOut.String(), "--proxy-bin")
	assert.Contains(t, errOut.String(), "--report")
}

// TestFindProxy: --proxy-bin names the sidecar executable (relative paths become absolute); a missing or
// non-executable file is refused with the flag's name in the message.
func TestFindProxy(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "my-proxy")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	plain := filepath.Join(dir, "not-executable")
	require.NoError(t, os.WriteFile(plain, nil, 0o644))
	t.Chdir(dir)

	for _, tt := range []struct {
		name, flag, want, err string
	}{
		{"absolute", exe, exe, ""},
		{"relative", "./my-proxy", exe, ""},
		{"missing", filepath.Join(dir, "nope"), "", "--proxy-bin"},
		{"not executable", plain, "", "not an executable"},
		{"a directory", dir, "", "not an executable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findProxy(tt.flag)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestDemoScreen: on a terminal the table is redrawn in place under the events; elsewhere it is plain lines.
func TestDemoScreen(t *testing.T) {
	var tty softhsmtest.LogBuffer
	s := newScreen(&tty, true)
	s.setTable([]string{"T1", "T2"})
	s.event("E1")
	s.setTable([]string{"T3"})
	assert.Equal(t, "T1\nT2\n"+"\x1b[2F\x1b[J"+"E1\nT1\nT2\n"+"\x1b[2F\x1b[J"+"T3\n", tty.String())

	var plain softhsmtest.LogBuffer
	s = newScreen(&plain, false)
	s.setTable([]string{"T1", "T2"})
	s.event("E1")
	s.setTable([]string{"T3"})
	assert.Equal(t, "T1\nT2\nE1\nT3\n", plain.String())
}

// TestDemoLogFilter: the sidecar's successful access lines are dropped, the rest is kept, and its own
// events are passed on as one-line summaries, however the output is split.
func TestDemoLogFilter(t *testing.T) {
	input := `{"level":"INFO","msg":"access","outcome":"ok","device":"eastus-1"}
{"level":"INFO","msg":"access","outcome":"no_device","status":503}
{"level":"WARN","msg":"device state changed","device":"eastus-1","from":"up","to":"down","reason":"C_Sign: CKR_DEVICE_ERROR"}
{"level":"WARN","msg":"breaker changed","device":"eastus-2","from":"closed","to":"open"}
{"level":"INFO","msg":"device re-initialised","device":"eastus-1"}
{"level":"INFO","msg":"hsm-ha-proxy started"}
not json
{"level":"ERROR","msg":"serving","err":"boom"}`
	var out softhsmtest.LogBuffer
	var events []string
	f := &logFilter{out: &out, onEvent: func(s string) { events = append(events, s) }}
	for b := []byte(input); len(b) > 0; {
		n := min(len(b), 7)
		_, _ = f.Write(b[:n])
		b = b[n:]
	}
	f.flush()
	assert.NotContains(t, out.String(), `"outcome":"ok"`)
	assert.Contains(t, out.String(), `"outcome":"no_device"`)
	assert.Contains(t, out.String(), "not json\n")
	assert.Contains(t, out.String(), `"msg":"serving"`)
	assert.Equal(t, []string{
		"eastus-1 up -> down: C_Sign: CKR_DEVICE_ERROR",
		"eastus-2 breaker closed -> open",
		"eastus-1 module re-initialised",
		"ERROR serving err=boom",
	}, events)
}

func TestDemoShellQuote(t *testing.T) {
	assert.Equal(t, "/tmp/hsm-ha-demo-1/proxy.sock", shellQuote("/tmp/hsm-ha-demo-1/proxy.sock"))
	assert.Equal(t, `'/tmp/a b/it'\''s'`, shellQuote("/tmp/a b/it's"))
}
