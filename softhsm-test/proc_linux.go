package softhsmtest

import "syscall"

// sysProcAttr puts the child in a process group of its own (so faults and cleanup reach the processes it
// forks, one p11-kit-remote per connection) and kills it when this process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
