package p11front

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/handover"
)

// TestHandOverMidOperation: a client of the stock p11-kit-client.so is in the middle of everything when its
// connection moves to another server (as a hot upgrade moves it to the new process): logged in, a
// multi-part signature, verification, digest and encryption begun, a search half read. On the new server the same session
// handle finishes them all, still logged in, and the signature verifies.
func TestHandOverMidOperation(t *testing.T) {
	c, old, be := newClientT(t)
	msg1, msg2 := []byte("the first half, hashed by the old process; "), []byte("the second, by the new one")
	digest := sha256.Sum256(append(append([]byte{}, msg1...), msg2...))
	sigOld, err := c.rsaKey.Sign(nil, digest[:], crypto.SHA256)
	require.NoError(t, err)

	require.NoError(t, c.p.Login(c.s, pkcs11.CKU_USER, "ignored"))
	require.NoError(t, c.p.SignInit(c.s, mechOf(pkcs11.CKM_SHA256_RSA_PKCS, nil), c.rsaPriv))
	require.NoError(t, c.p.SignUpdate(c.s, msg1))
	require.NoError(t, c.p.VerifyInit(c.s, mechOf(pkcs11.CKM_SHA256_RSA_PKCS, nil), c.rsaPub))
	require.NoError(t, c.p.VerifyUpdate(c.s, msg1))
	require.NoError(t, c.p.DigestInit(c.s, mechOf(pkcs11.CKM_SHA256, nil)))
	require.NoError(t, c.p.DigestUpdate(c.s, msg1))
	require.NoError(t, c.p.EncryptInit(c.s, mechOf(pkcs11.CKM_RSA_PKCS, nil), c.rsaPub))
	_, err = c.p.EncryptUpdate(c.s, []byte("a secret in "))
	require.NoError(t, err)
	require.NoError(t, c.p.FindObjectsInit(c.s, nil))
	first, _, err := c.p.FindObjects(c.s, 1)
	require.NoError(t, err)
	require.Len(t, first, 1)

	moveConnections(t, old, be, []string{"payments", "hidden", "ledger"})

	require.NoError(t, c.p.SignUpdate(c.s, msg2))
	sig, err := c.p.SignFinal(c.s)
	require.NoError(t, err, "the signature begun in the old process ends in the new one")
	assert.NoError(t, rsa.VerifyPKCS1v15(&c.rsaKey.PublicKey, crypto.SHA256, digest[:], sig))
	assert.Equal(t, sigOld, sig, "PKCS#1 v1.5 is deterministic: the same input was signed")
	require.NoError(t, c.p.VerifyUpdate(c.s, msg2))
	require.NoError(t, c.p.VerifyFinal(c.s, sig), "and so does the verification")
	require.NoError(t, c.p.DigestUpdate(c.s, msg2))
	sum, err := c.p.DigestFinal(c.s)
	require.NoError(t, err)
	assert.Equal(t, digest[:], sum, "the digest hashed in two processes")
	_, err = c.p.EncryptUpdate(c.s, []byte("two parts"))
	require.NoError(t, err)
	ct, err := c.p.EncryptFinal(c.s)
	require.NoError(t, err)
	pt, err := rsa.DecryptPKCS1v15(nil, c.rsaKey, ct)
	require.NoError(t, err)
	assert.Equal(t, "a secret in two parts", string(pt), "the encryption gathered in two processes")
	rest, _, err := c.p.FindObjects(c.s, 100)
	require.NoError(t, err)
	require.NoError(t, c.p.FindObjectsFinal(c.s))
	assert.NotContains(t, rest, first[0], "the search goes on where it was")
	assert.Len(t, append(first, rest...), 4, "rsa-key and ec-key, private and public: %v", rest)
	info, err := c.p.GetSessionInfo(c.s)
	require.NoError(t, err, "the session handle is the same")
	assert.Equal(t, uint(pkcs11.CKS_RO_USER_FUNCTIONS), info.State, "still logged in")
	assert.ErrorIs(t, c.p.Login(c.s, pkcs11.CKU_USER, "ignored"), pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN))
	assert.Equal(t, c.rsaPriv, findKey(t, c.p, c.s, pkcs11.CKO_PRIVATE_KEY, "rsa-key"), "object handles are the same")
}

// moveConnections hands every connection of old over to a new server of be (on another socket, which
// no one uses: the connections are what moves) and returns it; it runs until the test ends.
func moveConnections(t *testing.T, old *frontT, be Backend, partitions []string) *Server {
	t.Helper()
	pf, cf, err := handover.Pair()
	require.NoError(t, err)
	send, err := handover.Open(pf)
	require.NoError(t, err)
	recv, err := handover.Open(cf)
	require.NoError(t, err)
	defer send.Close()
	defer recv.Close()
	logs := &syncBuffer{}
	srv := New(be, fakeAuth{os.Getuid(): {"payments", "ledger"}}, Options{Partitions: partitions,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ln, err := Listen("unix://"+filepath.Join(shortDir(t), "new.sock"), "")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-served)
		if t.Failed() {
			t.Logf("new server's log:\n%s", logs.String())
		}
	})
	handed := make(chan int, 1)
	go func() {
		n, err := old.srv.HandOver(context.Background(), send)
		assert.NoError(t, err)
		handed <- n
	}()
	m, err := recv.Recv()
	require.NoError(t, err)
	require.Equal(t, handover.KindPKCS11Objects, m.Kind)
	require.NoError(t, srv.ImportObjects(m.Body))
	go func() { served <- srv.Serve(ctx, ln) }()
	m, err = recv.Recv()
	require.NoError(t, err)
	require.Equal(t, handover.KindPKCS11Conn, m.Kind)
	require.NoError(t, srv.Adopt(m.File, m.Body))
	assert.Equal(t, 1, <-handed)
	return srv
}

// TestAdoptRefuses: a state document of another version, or naming another peer than the socket's
// SO_PEERCRED, is refused and the connection closed.
func TestAdoptRefuses(t *testing.T) {
	f, _ := softFront(t)
	tests := []struct {
		name, want string
		edit       func(*connState)
	}{
		{"another version", "version", func(st *connState) { st.Version = stateVersion + 1 }},
		{"another peer", "uid", func(st *connState) { st.Peer.UID = os.Getuid() + 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b, err := handover.Pair() // any unix socket: its peer is this process
			require.NoError(t, err)
			defer b.Close()
			st := connState{Version: stateVersion, Peer: peerState{UID: os.Getuid()}, Protocol: 1}
			tt.edit(&st)
			body, err := json.Marshal(st)
			require.NoError(t, err)
			err = f.srv.Adopt(a, body)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
