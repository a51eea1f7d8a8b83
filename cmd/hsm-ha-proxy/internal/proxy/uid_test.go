package proxy

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// TestE2EOtherUIDs: with server.listen_group the HTTP API's socket is 0660 for that group, and curl run as
// other users (setpriv) gets exactly what the clients table grants its uid: a uid granted ledger signs
// with ledger's key and is refused payments (403); a uid in the group but not in the table is not a
// client (401); a uid outside the group cannot connect at all.
func TestE2EOtherUIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run curl as another uid")
	}
	for _, tool := range []string{"setpriv", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	const gid, ledgerUID, unknownUID, otherGID = 4242, 4241, 4243, 4244
	topo := startTopology(t, softhsmtest.Options{})
	dir := shortTempDir(t)
	require.NoError(t, os.Chmod(dir, 0o711)) // the other uids reach the socket through its directory
	sock := filepath.Join(dir, "api.sock")
	ts := startSidecar(t, topo, e2eOptions{
		clients: meClients("payments", "ledger") + fmt.Sprintf("\n- {name: ledger-app, unix_uid: %d, partitions: [ledger]}", ledgerUID),
		server:  sidecarconfig.ServerConfig{Listen: "unix://" + sock, ListenGroup: strconv.Itoa(gid)},
	})
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "server.listen_group: mode 0660")

	digest := sha256.Sum256([]byte("signed by another user"))
	body := fmt.Sprintf(`{"digest":%q,"algorithm":"ECDSA_SHA256"}`, base64.StdEncoding.EncodeToString(digest[:]))
	curlAs := func(uid, gid int, partition string) (status int, out string, err error) {
		b, err := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups",
			"curl", "-sS", "--unix-socket", sock, "-H", "Content-Type: application/json", "-d", body,
			"-w", "\n%{http_code}", "http://sidecar/v1/partitions/"+partition+"/keys/ec-key/sign").CombinedOutput()
		out = string(b)
		if i := strings.LastIndexByte(out, '\n'); i >= 0 {
			status, _ = strconv.Atoi(strings.TrimSpace(out[i+1:]))
			out = out[:i]
		}
		return status, out, err
	}

	status, out, err := curlAs(ledgerUID, gid, "ledger")
	require.NoError(t, err, out)
	require.Equal(t, 200, status, out)
	var resp struct{ Signature string }
	require.NoError(t, json.Unmarshal([]byte(out), &resp))
	sig, err := base64.StdEncoding.DecodeString(resp.Signature)
	require.NoError(t, err)
	assert.True(t, ecdsa.VerifyASN1(topo.Keys["ec-key"].Public().(*ecdsa.PublicKey), digest[:], sig), "the signature verifies")

	status, out, _ = curlAs(ledgerUID, gid, "payments")
	assert.Equal(t, 403, status, "ledger-app may not use payments: %s", out)
	status, out, _ = curlAs(unknownUID, gid, "ledger")
	assert.Equal(t, 401, status, "a uid that is not a client: %s", out)
	assert.Contains(t, out, `"unauthenticated"`)
	status, out, err = curlAs(unknownUID, otherGID, "ledger")
	assert.Error(t, err, "outside the group the socket refuses the connection")
	assert.Zero(t, status, out)
	assert.Contains(t, ts.logs.String(), strconv.Itoa(unknownUID), "the refused uid is logged")
}
