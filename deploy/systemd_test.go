package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var unitPath = filepath.Join("systemd", "hsm-ha-proxy.service")

// unitBinary is the ExecStart binary the unit names (the install path of docs/operations.md).
const unitBinary = "/usr/local/bin/hsm-ha-proxy"

// readUnit returns the unit's [Service] settings (a key set several times keeps every value).
func readUnit(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open(unitPath)
	require.NoError(t, err)
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "%s: %q", unitPath, line)
			out[k] = append(out[k], v)
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// TestSystemdUnitSettings: the unit runs the sidecar as its own user with the hardening docs/operations.md
// lists, reloads with SIGHUP, follows a hot upgrade's new process and gets its socket directory from
// systemd.
func TestSystemdUnitSettings(t *testing.T) {
	u := readUnit(t)
	want := map[string]string{
		"User": "hsm-ha-proxy", "Group": "hsm-ha-proxy", "RuntimeDirectory": "hsm-ha-proxy",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
		"ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
		"CapabilityBoundingSet": "", "AmbientCapabilities": "", "MemoryDenyWriteExecute": "yes",
		"LockPersonality": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
		"SystemCallArchitectures": "native", "UMask": "0077",
		// The new process of a hot upgrade is the old one's child: it says MAINPID= (cmd/hsm-ha-proxy notify.go).
		"Type": "notify", "NotifyAccess": "all",
	}
	for k, v := range want {
		assert.Equal(t, []string{v}, u[k], "%s=", k)
	}
	assert.Contains(t, u["SystemCallFilter"], "@system-service")
	assert.NotContains(t, u, "PrivateUsers", "a private user namespace would hide client uids (SO_PEERCRED)")
	require.Len(t, u["ExecStart"], 1)
	argv := strings.Fields(u["ExecStart"][0])
	assert.Equal(t, []string{unitBinary, "serve", "--config"}, argv[:3])
	assert.NotEmpty(t, flagValue(argv, "--metrics-addr"), "Prometheus cannot scrape the unix socket")
	assert.Equal(t, []string{"/bin/kill -HUP $MAINPID"}, u["ExecReload"])
}

// TestSystemdAnalyze runs `systemd-analyze verify` on the unit (its ExecStart pointed at a built
// binary, which verify requires to exist) and fails on any complaint, then its offline security review.
func TestSystemdAnalyze(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd)")
	}
	unit, err := os.ReadFile(unitPath)
	require.NoError(t, err)
	require.Contains(t, string(unit), "ExecStart="+unitBinary+" ")
	dir := t.TempDir()
	path := filepath.Join(dir, filepath.Base(unitPath))
	unit = []byte(strings.ReplaceAll(string(unit), unitBinary, sidecarBinary(t)))
	require.NoError(t, os.WriteFile(path, unit, 0o644))

	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify:\n%s", out)
	// verify exits 0 on unknown keys and bad values, which it only prints.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		assert.NotContains(t, line, filepath.Base(unitPath), "systemd-analyze verify complains")
	}

	// Exposure 0 (locked down) to 10 (none); 1.x is "OK", the best a networked service gets.
	out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=20", path).CombinedOutput()
	require.NoError(t, err, "systemd-analyze security: exposure above 2.0:\n%s", out)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "Overall exposure level") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// TestSystemdUsersAndDirectories applies the sysusers.d and tmpfiles.d snippets to a scratch root: the
// user is created, and the config and PIN directories are root-owned, readable by its group only.
func TestSystemdUsersAndDirectories(t *testing.T) {
	sysusers, err1 := exec.LookPath("systemd-sysusers")
	tmpfiles, err2 := exec.LookPath("systemd-tmpfiles")
	if err1 != nil || err2 != nil {
		t.Skip("systemd-sysusers or systemd-tmpfiles is not installed (Debian package systemd)")
	}
	if os.Geteuid() != 0 {
		t.Skip("systemd-tmpfiles --root chowns: needs root")
	}
	root := t.TempDir()
	for _, kind := range []string{"sysusers.d", "tmpfiles.d"} {
		b, err := os.ReadFile(filepath.Join("systemd", kind, "hsm-ha-proxy.conf"))
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Join(root, "etc", kind), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, "etc", kind, "hsm-ha-proxy.conf"), b, 0o644))
	}
	out, err := exec.Command(sysusers, "--root="+root).CombinedOutput()
	require.NoError(t, err, "systemd-sysusers: %s", out)
	passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	require.NoError(t, err)
	var gid string
	for _, line := range strings.Split(string(passwd), "\n") {
		if f := strings.Split(line, ":"); len(f) == 7 && f[0] == "hsm-ha-proxy" {
			assert.Equal(t, "/usr/sbin/nologin", f[6])
			assert.NotEqual(t, "0", f[2])
			gid = f[3]
		}
	}
	require.NotEmpty(t, gid, "user hsm-ha-proxy in %s", passwd)

	out, err = exec.Command(tmpfiles, "--root="+root, "--create").CombinedOutput()
	require.NoError(t, err, "systemd-tmpfiles: %s", out)
	for _, d := range []string{"etc/hsm-ha-proxy", "etc/hsm-ha-proxy/pins"} {
		fi, err := os.Stat(filepath.Join(root, d))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o750), fi.Mode().Perm(), d)
		assert.Equal(t, "0 "+gid, ownerOf(fi), "%s: root, group hsm-ha-proxy", d)
	}
}
