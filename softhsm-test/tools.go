package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Tools are the programs and PKCS#11 modules the harness runs.
type Tools struct {
	SoftHSMModule string // libsofthsm2.so (Debian package softhsm2)
	SoftHSMUtil   string // softhsm2-util (Debian package softhsm2)
	P11Kit        string // the p11-kit program, for `p11-kit server` (Debian package p11-kit)
	P11KitClient  string // p11-kit-client.so (Debian package p11-kit-modules)
	PKCS11Tool    string // pkcs11-tool (Debian package opensc), or "": needed only for Options.Certificates
}

// Environment variables that override where the modules are looked for.
const (
	EnvSoftHSMModule = "SOFTHSMTEST_SOFTHSM_MODULE"
	EnvP11KitClient  = "SOFTHSMTEST_P11KIT_CLIENT"
)

// debianTriplet is the Debian multiarch directory name for this architecture.
func debianTriplet() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64-linux-gnu"
	case "arm64":
		return "aarch64-linux-gnu"
	case "386":
		return "i386-linux-gnu"
	case "arm":
		return "arm-linux-gnueabihf"
	case "ppc64le":
		return "powerpc64le-linux-gnu"
	case "s390x":
		return "s390x-linux-gnu"
	case "riscv64":
		return "riscv64-linux-gnu"
	case "mips64le":
		return "mips64el-linux-gnuabi64"
	case "loong64":
		return "loongarch64-linux-gnu"
	}
	return runtime.GOARCH + "-linux-gnu"
}

// Candidate locations: the Debian install locations only (plus the environment overrides above).
func softhsmModuleCandidates() []string {
	return []string{
		"/usr/lib/softhsm/libsofthsm2.so",
		filepath.Join("/usr/lib", debianTriplet(), "softhsm/libsofthsm2.so"),
	}
}

func p11KitClientCandidates() []string {
	return []string{
		filepath.Join("/usr/lib", debianTriplet(), "pkcs11/p11-kit-client.so"),
		"/usr/lib/pkcs11/p11-kit-client.so",
	}
}

// LookupTools finds the programs and modules the harness needs, or returns an error that names the
// missing file and the Debian package that provides it. Tests that want to skip rather than fail on a
// machine without SoftHSM can call it first.
func LookupTools() (Tools, error) {
	var tools Tools
	var missing []string
	var err error
	if tools.SoftHSMModule, err = findFile(EnvSoftHSMModule, "libsofthsm2.so", "softhsm2", softhsmModuleCandidates()); err != nil {
		missing = append(missing, err.Error())
	}
	if tools.P11KitClient, err = findFile(EnvP11KitClient, "p11-kit-client.so", "p11-kit-modules", p11KitClientCandidates()); err != nil {
		missing = append(missing, err.Error())
	}
	if tools.SoftHSMUtil, err = findProgram("softhsm2-util", "softhsm2"); err != nil {
		missing = append(missing, err.Error())
	}
	if tools.P11Kit, err = findProgram("p11-kit", "p11-kit"); err != nil {
		missing = append(missing, err.Error())
	}
	tools.PKCS11Tool, _ = findProgram("pkcs11-tool", "opensc") // optional
	if len(missing) > 0 {
		return tools, fmt.Errorf("softhsmtest: %s", strings.Join(missing, "; "))
	}
	return tools, nil
}

func findFile(envVar, name, pkg string, candidates []string) (string, error) {
	if p := os.Getenv(envVar); p != "" {
		if isRegular(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s: no such file (unset it to search the Debian locations)", envVar, p)
	}
	for _, c := range candidates {
		if isRegular(c) {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found in %s: install the Debian package %s (or set %s)",
		name, strings.Join(candidates, ", "), pkg, envVar)
}

func findProgram(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, c := range []string{"/usr/bin/" + name, "/bin/" + name} {
		if isRegular(c) {
			return c, nil
		}
	}
	return "", fmt.Errorf("program %s not found in PATH or /usr/bin: install the Debian package %s", name, pkg)
}

func isRegular(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}
