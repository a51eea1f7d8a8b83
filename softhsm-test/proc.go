package softhsmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The parent-death signal (Linux) is tied to the thread that forked the child, not to the process: a
// child started from an ordinary goroutine would be killed whenever the Go runtime retires that thread.
// So every server is started from one goroutine locked to its thread; the goroutine and its thread live
// as long as any child started from them is alive, then exit (and the thread with them).
var spawner struct {
	mu   sync.Mutex
	reqs chan spawnReq
	live int
}

type spawnReq struct {
	cmd *exec.Cmd
	res chan error
}

func spawnLoop(reqs chan spawnReq) {
	runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
	for r := range reqs {
		r.res <- r.cmd.Start()
	}
}

// spawn starts cmd on the spawner thread; release must be called once the child has been reaped.
func spawn(cmd *exec.Cmd) (release func(), err error) {
	spawner.mu.Lock()
	if spawner.reqs == nil {
		spawner.reqs = make(chan spawnReq)
		go spawnLoop(spawner.reqs)
	}
	reqs := spawner.reqs
	spawner.live++ // holds the loop open until release
	spawner.mu.Unlock()

	var once sync.Once
	release = func() {
		once.Do(func() {
			spawner.mu.Lock()
			defer spawner.mu.Unlock()
			spawner.live--
			if spawner.live == 0 {
				close(spawner.reqs)
				spawner.reqs = nil
			}
		})
	}
	res := make(chan error, 1)
	reqs <- spawnReq{cmd: cmd, res: res}
	if err := <-res; err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// proc is a child process that leads its own process group. It is always reaped: a goroutine waits
// for it from the start.
type proc struct {
	pid  int
	done chan struct{} // closed once the process has been reaped
	err  error         // its exit status, valid after done
}

func startProc(path string, args, env []string, logPath string) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	release, err := spawn(cmd)
	logFile.Close() // the child has its own descriptor
	if err != nil {
		return nil, fmt.Errorf("softhsmtest: start %s: %w", path, err)
	}
	p := &proc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		release()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the whole process group. Once the leader has been reaped, the group is only
// signalled while it still has members (whose existence keeps the group id from being reused).
func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		members, err := groupMembers(p.pid)
		if err != nil || len(members) == 0 {
			return errNotRunning
		}
	}
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("softhsmtest: kill(-%d, %v): %w", p.pid, sig, err)
	}
	return nil
}

var errNotRunning = errors.New("softhsmtest: device process is not running")

// kill SIGKILLs the process group and waits until the leader has been reaped and no other member of
// the group is left.
func (p *proc) kill(timeout time.Duration) error {
	return p.stop(syscall.SIGKILL, timeout)
}

// terminate asks the group to exit (SIGTERM), and kills it if it has not after grace.
func (p *proc) terminate(grace time.Duration) error {
	if p.stop(syscall.SIGTERM, grace) == nil {
		return nil
	}
	return p.stop(syscall.SIGKILL, 5*time.Second)
}

// stop signals the group with sig, the leader's children first: p11-kit server forks a p11-kit-remote
// per connection, and if the server died first they would become orphans, left as zombies until init
// reaps them (seconds, on some machines). While the server lives it reaps them at once. Stopped
// (paused) members are continued so that they can act on the signal and reap.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	if !p.exited() {
		childrenDeadline := time.Now().Add(min(timeout/2, 500*time.Millisecond))
		_ = syscall.Kill(p.pid, syscall.SIGCONT) // the leader only: it must run to reap
		for wait := 100 * time.Microsecond; ; wait = min(2*wait, 5*time.Millisecond) {
			states, err := groupStates(p.pid, true)
			if err != nil {
				break
			}
			others := 0
			for pid, st := range states {
				if pid == p.pid {
					continue
				}
				others++
				if st != "Z" {
					_ = syscall.Kill(pid, sig)
					if sig != syscall.SIGKILL {
						_ = syscall.Kill(pid, syscall.SIGCONT)
					}
				}
			}
			if others == 0 || p.exited() || time.Now().After(childrenDeadline) {
				break
			}
			time.Sleep(wait)
		}
	}
	_ = p.signal(sig)
	if sig != syscall.SIGKILL {
		_ = p.signal(syscall.SIGCONT)
	}
	select {
	case <-p.done:
	case <-deadline.C:
		return fmt.Errorf("softhsmtest: process %d not reaped %v after %v", p.pid, sig, timeout)
	}
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		members, err := groupMembers(p.pid)
		if err != nil || len(members) == 0 {
			return nil
		}
		_ = syscall.Kill(-p.pid, sig)
		select {
		case <-deadline.C:
			return fmt.Errorf("softhsmtest: process group %d still has members %v %v after %v", p.pid, members, sig, timeout)
		case <-time.After(wait):
		}
	}
}

// groupMembers lists the processes of group pgid that are not zombies (a zombie whose parent has died
// is reaped by init). Without /proc it reports whether kill(-pgid, 0) finds anybody.
func groupMembers(pgid int) ([]int, error) {
	states, err := groupStates(pgid, false)
	if err != nil {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return nil, nil
		}
		return []int{-pgid}, nil
	}
	pids := make([]int, 0, len(states))
	for pid := range states {
		pids = append(pids, pid)
	}
	return pids, nil
}

// groupStates maps each member of group pgid to its state letter in /proc/PID/stat ("R", "S", "T" when
// stopped, "Z" for a zombie, ...); zombies only if withZombies.
func groupStates(pgid int, withZombies bool) (map[int]string, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	states := make(map[int]string)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err != nil || g != pgid {
			continue
		}
		if f[0] == "X" || f[0] == "Z" && !withZombies {
			continue
		}
		states[pid] = f[0]
	}
	return states, nil
}

// waitListening polls until the unix socket accepts a connection, p exits, or ctx ends.
func waitListening(ctx context.Context, p *proc, socket string) error {
	for wait := time.Millisecond; ; wait = min(2*wait, 20*time.Millisecond) {
		if _, err := os.Stat(socket); err == nil {
			var d net.Dialer
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := d.DialContext(dctx, "unix", socket)
			cancel()
			if err == nil {
				c.Close()
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before listening on %s: %v", socket, p.err)
		case <-ctx.Done():
			return fmt.Errorf("not listening on %s: %w", socket, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// logTail returns the last n bytes of a log file.
func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	_, _ = f.ReadAt(buf, off)
	return strings.TrimSpace(string(buf))
}
