package p11front

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOtherUIDs runs pkcs11-tool as other users (setpriv) against a front end whose socket is 0660 for a
// group: a uid granted only ledger sees only ledger and cannot reach payments; an unknown uid sees no
// token at all, and the sidecar says so in its log.
func TestOtherUIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a tool as another uid")
	}
	needTool(t, "setpriv")
	const gid, ledgerUID, unknownUID = 4242, 4241, 4243
	d := startDevices(t)
	auth := fakeAuth{os.Getuid(): {"payments", "ledger"}, ledgerUID: {"ledger"}}
	f := startFrontWith(t, ClusterBackend(d.cl), auth, Options{Partitions: d.cl.Config().PartitionNames()}, strconv.Itoa(gid))
	fi, err := os.Stat(f.socket)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "server.pkcs11_group: mode 0660")
	require.NoError(t, os.Chmod(filepath.Dir(f.socket), 0o711)) // let the other uids reach the socket
	e := newToolEnv(t, f.socket, d.keys)
	require.NoError(t, os.Chmod(e.dir, 0o777))

	as := func(uid int, args ...string) (string, error) {
		return e.run(t, true, "setpriv", append([]string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid),
			"--clear-groups", "pkcs11-tool", "--module", e.module}, args...)...)
	}
	out, err := as(ledgerUID, "-L")
	require.NoError(t, err, out)
	assert.Contains(t, out, "token label        : ledger")
	assert.NotContains(t, out, "payments")
	out, err = as(ledgerUID, "--token-label", "payments", "-O")
	assert.Error(t, err, "payments is not there for this uid")
	assert.NotContains(t, out, "rsa-key")
	out, err = as(ledgerUID, "--token-label", "ledger", "-O")
	require.NoError(t, err, out)
	assert.Contains(t, out, "rsa-key")

	out, _ = as(unknownUID, "-L") // pkcs11-tool exits 1 when there is no slot
	assert.Contains(t, out, "No slots")
	assert.Contains(t, f.logs.String(), "uid=4243")
	assert.Contains(t, f.logs.String(), "not a configured client")
}
