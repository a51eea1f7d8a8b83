package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runUpgrade is `hsm-ha-proxy upgrade --pid-file FILE`: it sends SIGUSR2 to the serving process and waits
// until a new process serves (server.pid_file names it) and the old one has exited. Exit 0 then; 1 when
// that does not happen within --timeout (the old process keeps serving and its log says why).
func runUpgrade(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pidFile := fs.String("pid-file", "", "the sidecar's server.pid_file")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the new process (above server.upgrade_timeout plus server.shutdown_grace)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pidFile == "" || fs.NArg() > 0 {
		fmt.Fprint(stderr, "hsm-ha-proxy upgrade: --pid-file FILE is required (and nothing else)\n", usage)
		return 2
	}
	old, err := readPID(*pidFile)
	if err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy upgrade: %v\n", err)
		return 1
	}
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		fmt.Fprintf(stderr, "hsm-ha-proxy upgrade: signalling pid %d: %v\n", old, err)
		return 1
	}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		cur, err := readPID(*pidFile)
		if err != nil || cur == old || !alive(cur) || alive(old) {
			continue
		}
		fmt.Fprintf(stdout, "upgraded: pid %d now serves (was %d)\n", cur, old)
		return 0
	}
	if cur, err := readPID(*pidFile); err == nil && cur != old && alive(cur) {
		fmt.Fprintf(stderr, "hsm-ha-proxy upgrade: pid %d serves, but pid %d is still handing over after %s\n", cur, old, *timeout)
		return 1
	}
	fmt.Fprintf(stderr, "hsm-ha-proxy upgrade: no new process serves after %s: pid %d keeps serving; its log says why\n", *timeout, old)
	return 1
}

// readPID reads a pid file.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a pid", path)
	}
	return pid, nil
}

// alive tells whether a process exists and has not exited (a zombie, not reaped yet, has exited).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses; the state follows the last ')'.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
