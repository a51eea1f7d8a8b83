package handover

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func pair(t *testing.T) (parent, child *Conn) {
	t.Helper()
	pf, cf, err := Pair()
	require.NoError(t, err)
	parent, err = Open(pf)
	require.NoError(t, err)
	child, err = Open(cf)
	require.NoError(t, err)
	t.Cleanup(func() { parent.Close(); child.Close() })
	return parent, child
}

// TestSendRecv: messages arrive in order with their bodies whole (a body larger than a packet is chunked)
// and the descriptor each carried, which is a working duplicate; closing one end is EOF at the other.
func TestSendRecv(t *testing.T) {
	parent, child := pair(t)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	big := bytes.Repeat([]byte("state"), 3*chunk/5+7)
	tests := []struct {
		kind Kind
		body any
		fd   *os.File
	}{
		{KindHello, Hello{Version: Version, ParentReady: true, PKCS11: true}, nil},
		{KindPKCS11Conn, map[string][]byte{"pending": big}, w},
		{KindDone, struct{}{}, nil},
	}
	for _, tt := range tests {
		require.NoError(t, parent.Send(tt.kind, tt.body, tt.fd))
	}
	require.NoError(t, w.Close()) // the duplicate in flight keeps the pipe open
	require.NoError(t, parent.Close())

	m, err := child.Recv()
	require.NoError(t, err)
	assert.Equal(t, KindHello, m.Kind)
	assert.JSONEq(t, `{"version":1,"parent_ready":true,"pkcs11":true}`, string(m.Body))
	assert.Nil(t, m.File)

	m, err = child.Recv()
	require.NoError(t, err)
	assert.Equal(t, KindPKCS11Conn, m.Kind)
	var got map[string][]byte
	require.NoError(t, jsonUnmarshal(m.Body, &got))
	assert.Equal(t, big, got["pending"])
	require.NotNil(t, m.File)
	_, err = m.File.Write([]byte("through the passed descriptor"))
	require.NoError(t, err)
	require.NoError(t, m.File.Close())
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	assert.Equal(t, "through the passed descriptor", string(b))

	m, err = child.Recv()
	require.NoError(t, err)
	assert.Equal(t, KindDone, m.Kind)
	_, err = child.Recv()
	assert.True(t, IsEOF(err), "%v", err)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
