//go:build cpuprofile

package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// cpuProfileEnv names the file a binary built with -tags cpuprofile writes the CPU profile of
// `hsm-ha-proxy serve` to, from start to shutdown. The benchmark (lab/bench, hsm-bench
// -cpuprofile-dir) builds the sidecar so to profile the PKCS#11 front end under load; the deployed
// binary has no such hook.
const cpuProfileEnv = "HSM_HA_PROXY_CPUPROFILE"

func init() {
	path := os.Getenv(cpuProfileEnv)
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hsm-ha-proxy: %s: %v\n", cpuProfileEnv, err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "hsm-ha-proxy: %s: %v\n", cpuProfileEnv, err)
		f.Close()
		return
	}
	stopCPUProfile = func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
