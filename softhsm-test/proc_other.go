//go:build !linux

package softhsmtest

import "syscall"

// sysProcAttr puts the child in a process group of its own (so faults and cleanup reach the processes it
// forks, one p11-kit-remote per connection).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
