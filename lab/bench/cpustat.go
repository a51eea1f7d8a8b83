package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ, 100 on Linux).
const clockTick = time.Second / 100

// procStat reads a process's group and its user+system CPU time so far from /proc/PID/stat.
func procStat(pid int) (pgrp int, cpu time.Duration, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid pgrp ... utime stime: comm may hold spaces and parentheses, so the fields are
	// counted after the last ')'; utime and stime are fields 14 and 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, false
	}
	pgrp, err1 := strconv.Atoi(f[2])
	ut, err2 := strconv.ParseInt(f[11], 10, 64)
	st, err3 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, false
	}
	return pgrp, time.Duration(ut+st) * clockTick, true
}

// processCPU is one process's CPU time so far (0 when it is gone).
func processCPU(pid int) time.Duration {
	_, cpu, _ := procStat(pid)
	return cpu
}

// groupCPU is the CPU time so far of the live processes of group pgid: a device's `p11-kit server` and the
// p11-kit-remote it runs for each connection (which lives as long as its connection).
func groupCPU(pgid int) time.Duration {
	if pgid <= 0 {
		return 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, cpu, ok := procStat(pid); ok && g == pgid {
			sum += cpu
		}
	}
	return sum
}

// childrenCPU is the CPU time so far of the live processes whose parent is pid.
func childrenCPU(pid int) time.Duration {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
		if err != nil {
			continue
		}
		st := string(b)
		f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			sum += processCPU(c)
		}
	}
	return sum
}
