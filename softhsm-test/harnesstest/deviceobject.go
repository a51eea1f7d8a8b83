package harnesstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// DeviceObject reads the object labelled label, of pkcs11-tool's --type typ ("pubkey", "cert"...), from
// token of device d itself — its own module, not through the cluster — or nil when the device holds none.
// It skips the test when pkcs11-tool is not installed.
func DeviceObject(tb testing.TB, d *softhsmtest.Device, token, typ, label string) []byte {
	tb.Helper()
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		tb.Fatalf("harnesstest.DeviceObject: %v", err)
	}
	if tools.PKCS11Tool == "" {
		tb.Skip("pkcs11-tool not installed (Debian package opensc)")
	}
	out := filepath.Join(tb.TempDir(), "obj.der")
	cmd := exec.Command(tools.PKCS11Tool, "--module", d.ModulePath, "--token-label", token, "--read-object", "--type", typ,
		"--label", label, "--output-file", out)
	cmd.Env = os.Environ()
	for k, v := range d.ModuleEnv {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Logf("pkcs11-tool on %s, %s %s: %v: %s", d.Name, typ, label, err, b)
		return nil
	}
	b, err := os.ReadFile(out)
	if err != nil {
		tb.Fatalf("harnesstest.DeviceObject: %v", err)
	}
	return b
}
