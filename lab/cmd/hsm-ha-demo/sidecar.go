package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// childProc is the sidecar: this binary's serve command, in its own process group (so that a Ctrl-C in
// the terminal reaches the demo only, which stops the load first), killed if the demo dies (Linux).
type childProc struct {
	path, logPath string
	pid           int
	done          chan struct{}
	err           error
}

// startSidecar starts the sidecar with its JSON log going through a filter: the access lines of
// successful requests are dropped (hundreds a second), everything else goes to logPath, and the
// sidecar's own events (device state, breaker, re-init, warnings) are passed to onEvent as they come.
func startSidecar(path string, args []string, logPath string, onEvent func(line string)) (*childProc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	filter := &logFilter{out: logFile, onEvent: onEvent}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = filter, filter
	cmd.SysProcAttr = childSysProcAttr()
	p := &childProc{path: path, logPath: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	// The parent-death signal fires when the thread that started the child exits: start it from a
	// goroutine that keeps its thread (locked, never unlocked) until the child has been reaped.
	go func() {
		lockThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait() // also waits until the filter has seen the last byte
		filter.flush()
		logFile.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		logFile.Close()
		return nil, err
	}
	return p, nil
}

// stop sends SIGTERM, waits up to grace (or until force is closed), then SIGKILLs, and waits until the
// child has been reaped.
func (p *childProc) stop(grace time.Duration, force <-chan struct{}) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(p.pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-force:
	}
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return fmt.Errorf("pid %d killed (SIGKILL) after it did not stop on SIGTERM", p.pid)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pid %d not reaped after SIGKILL", p.pid)
	}
}

func (p *childProc) exitText() string {
	if p.err == nil {
		return "exit status 0"
	}
	return p.err.Error()
}

// logFilter splits the sidecar's output into lines and filters them (see startSidecar).
type logFilter struct {
	mu      sync.Mutex
	out     io.Writer
	onEvent func(string)
	partial []byte
}

func (f *logFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.partial = append(f.partial, p...)
	for {
		i := bytes.IndexByte(f.partial, '\n')
		if i < 0 {
			break
		}
		f.line(f.partial[:i+1])
		f.partial = f.partial[i+1:]
	}
	f.partial = append([]byte(nil), f.partial...) // do not pin a large buffer
	return len(p), nil
}

func (f *logFilter) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.partial) > 0 {
		f.line(append(f.partial, '\n'))
		f.partial = nil
	}
}

func (f *logFilter) line(b []byte) {
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		_, _ = f.out.Write(b) // not JSON (a panic, say): keep it
		return
	}
	str := func(k string) string { s, _ := rec[k].(string); return s }
	if str("msg") == "access" && str("outcome") == "ok" {
		return
	}
	_, _ = f.out.Write(b)
	if f.onEvent == nil {
		return
	}
	var ev string
	switch str("msg") {
	case "device state changed":
		ev = fmt.Sprintf("%s %s -> %s", str("device"), str("from"), str("to"))
		if r := str("reason"); r != "" {
			ev += ": " + sidecarapi.OneLine(r, 110)
		}
	case "breaker changed":
		ev = fmt.Sprintf("%s breaker %s -> %s", str("device"), str("from"), str("to"))
	case "device re-initialised":
		ev = str("device") + " module re-initialised"
	case "access":
		return // failed requests: the load reports them
	default:
		if lv := str("level"); lv == "WARN" || lv == "ERROR" {
			ev = lv + " " + str("msg")
			for _, k := range []string{"device", "partition", "err", "error"} {
				if v := str(k); v != "" {
					ev += " " + k + "=" + sidecarapi.OneLine(v, 110)
				}
			}
		}
	}
	if ev != "" {
		f.onEvent(ev)
	}
}
