package p11front

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// rawConn speaks the protocol by hand, to send what no real client would.
type rawConn struct {
	nc   net.Conn
	br   *bufio.Reader
	code uint32
}

func dialRaw(t *testing.T, socket string) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
	r := &rawConn{nc: nc, br: bufio.NewReader(nc), code: 0x10}
	_, err = nc.Write([]byte{0})
	require.NoError(t, err)
	v, err := r.br.ReadByte()
	require.NoError(t, err)
	require.Equal(t, byte(0), v, "version 0 answered with 0")
	return r
}

// call sends body and returns the reply's body (under the same code).
func (r *rawConn) call(t *testing.T, body []byte) []byte {
	t.Helper()
	r.code++
	require.NoError(t, p11rpc.WriteFrame(r.nc, p11rpc.Frame{Code: r.code, Options: []byte("client"), Body: body}))
	f, err := p11rpc.ReadFrame(r.br, 1<<20)
	require.NoError(t, err)
	require.Equal(t, r.code, f.Code)
	return f.Body
}

// errorRV returns the CK_RV of an error reply, or -1 when the reply is not one.
func errorRV(body []byte) int64 {
	if len(body) != 17 || binary.BigEndian.Uint32(body) != 0 || string(body[4:9]) != "\x00\x00\x00\x01u" {
		return -1
	}
	return int64(binary.BigEndian.Uint64(body[9:]))
}

// request builds a request body: call id, signature, then the raw argument bytes.
func request(call p11rpc.CallID, sig string, args ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(call))
	b = binary.BigEndian.AppendUint32(b, uint32(len(sig)))
	b = append(b, sig...)
	for _, a := range args {
		b = append(b, a...)
	}
	return b
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// initialize is C_Initialize as p11-kit 0.24.1's client sends it (captured).
var initialize = func() []byte {
	b, _ := hex.DecodeString("000000010000000561797961790100000029505249564154452d474e4f4d452d4b455952494e472d504b435331312d50524f544f434f4c2d562d3100010000000100")
	return b
}()

// TestMalformedInput: whatever a client sends, it gets a PKCS#11 error (or, when the framing itself is
// broken, its connection closed), a log line, and nothing else changes: the server keeps serving it and
// every other client.
func TestMalformedInput(t *testing.T) {
	f, _ := softFront(t)
	good := openClient(t, f.socket)
	slotList := request(p11rpc.CallGetSlotList, "yfu", []byte{1}, []byte{0, 0, 0, 8})
	r := dialRaw(t, f.socket)
	assert.Equal(t, int64(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED), errorRV(r.call(t, slotList)), "a call before C_Initialize")
	require.Equal(t, []byte{0, 0, 0, 1, 0, 0, 0, 0}, r.call(t, initialize))
	opened := r.call(t, request(p11rpc.CallOpenSession, "uu", u64(1), u64(pkcs11.CKF_SERIAL_SESSION)))
	require.Len(t, opened, 17)
	sess := u64(binary.BigEndian.Uint64(opened[9:]))

	tests := []struct {
		name string
		body []byte
		rv   uint64
	}{
		{"unknown call id", request(200, "u", u64(1)), pkcs11.CKR_FUNCTION_NOT_SUPPORTED},
		{"call id 0", request(0, "u", u64(1)), pkcs11.CKR_FUNCTION_NOT_SUPPORTED},
		{"too short for a call id", []byte{1, 2}, pkcs11.CKR_FUNCTION_NOT_SUPPORTED},
		{"an unsupported call", request(p11rpc.CallWrapKey, "uMuufy", []byte("junk")), pkcs11.CKR_FUNCTION_NOT_SUPPORTED},
		{"a malformed management call", request(p11rpc.CallGenerateKeyPair, "uMaAaA", []byte("junk")), pkcs11.CKR_DEVICE_ERROR},
		{"truncated argument", request(p11rpc.CallGetSlotInfo, "u", []byte{0, 0, 0}), pkcs11.CKR_DEVICE_ERROR},
		{"wrong signature", request(p11rpc.CallGetSlotInfo, "y", []byte{1}), pkcs11.CKR_DEVICE_ERROR},
		{"bytes left over", request(p11rpc.CallGetSlotInfo, "u", u64(1), []byte{9}), pkcs11.CKR_DEVICE_ERROR},
		{"absurd array length", request(p11rpc.CallSign, "uayfy", u64(1), []byte{1, 0xff, 0xff, 0xff, 0xf0}), pkcs11.CKR_DEVICE_ERROR},
		{"unknown session", request(p11rpc.CallCloseSession, "u", u64(77)), pkcs11.CKR_SESSION_HANDLE_INVALID},
		{"a slot it may not see", request(p11rpc.CallGetTokenInfo, "u", u64(2)), pkcs11.CKR_SLOT_ID_INVALID},
		{"out of order: C_Sign with no C_SignInit", request(p11rpc.CallSign, "uayfy", sess, []byte{1, 0, 0, 0, 1, 7}, []byte{0, 0, 1, 0}),
			pkcs11.CKR_OPERATION_NOT_INITIALIZED},
		{"out of order: C_FindObjects with no C_FindObjectsInit", request(p11rpc.CallFindObjects, "ufu", sess, []byte{0, 0, 0, 1}),
			pkcs11.CKR_OPERATION_NOT_INITIALIZED},
		{"a second C_Initialize", initialize, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, int64(tt.rv), errorRV(r.call(t, tt.body)))
		})
	}
	reply := r.call(t, slotList)
	assert.Equal(t, int64(-1), errorRV(reply), "the same connection still serves")
	assert.Contains(t, f.logs.String(), "malformed message")

	t.Run("broken framing costs only that connection", func(t *testing.T) {
		for _, junk := range []struct {
			b      []byte
			hangUp bool // the peer stops writing after b
		}{
			{[]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false},                  // frame code 0
			{[]byte{0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 50, 1, 2}, true},            // cut short
			{[]byte{0, 0, 0, 9, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 2}, true}, // 4 GiB announced, 2 bytes sent
		} {
			bad := dialRaw(t, f.socket)
			_, err := bad.nc.Write(junk.b)
			require.NoError(t, err)
			if junk.hangUp {
				bad.nc.(*net.UnixConn).CloseWrite()
			}
			_, err = bad.br.ReadByte()
			assert.ErrorIs(t, err, io.EOF, "the server closed that connection")
		}
		slots, err := good.GetSlotList(true)
		require.NoError(t, err)
		assert.Len(t, slots, 2, "another client is unaffected")
		assert.Equal(t, int64(-1), errorRV(r.call(t, slotList)), "and so is this one")
		assert.Contains(t, f.logs.String(), "closing this connection")
	})
}

// TestOversizeMessage: a message over the size limit is skipped and answered with a PKCS#11 error — data too
// long for a call that carries data, whose operation then ends as PKCS#11 has it, CKR_ARGUMENTS_BAD for
// any other — and the application keeps its connection (p11-kit-client never reconnects).
func TestOversizeMessage(t *testing.T) {
	_, ecKey, _ := softSigners(t)
	be := newFakeBackend()
	be.add("payments", "ec-key", []byte{2}, ecKey)
	f := startFrontWith(t, be, fakeAuth{os.Getuid(): {"payments"}}, Options{Partitions: []string{"payments"}, MaxFrame: 4096}, "")
	p := openClient(t, f.socket)
	s := openSession(t, p, "payments")

	big := bytes.Repeat([]byte{7}, 5000)
	require.NoError(t, p.DigestInit(s, mechOf(pkcs11.CKM_SHA256, nil)))
	_, err := p.Digest(s, big)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE), err, "C_Digest of more than the limit")
	require.NoError(t, p.DigestInit(s, mechOf(pkcs11.CKM_SHA256, nil)), "the failed C_Digest ended its operation")
	require.NoError(t, p.DigestUpdate(s, big[:2500]))
	require.NoError(t, p.DigestUpdate(s, big[2500:]))
	got, err := p.DigestFinal(s)
	require.NoError(t, err, "multi-part input is not bounded by the message limit")
	want := sha256.Sum256(big)
	assert.Equal(t, want[:], got)

	key := findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "ec-key")
	require.NoError(t, p.SignInit(s, mechOf(pkcs11.CKM_ECDSA, nil), key))
	_, err = p.Sign(s, big)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE), err)
	require.NoError(t, p.SignInit(s, mechOf(pkcs11.CKM_ECDSA, nil), key), "the failed C_Sign ended its operation")
	d := sha256.Sum256([]byte("after"))
	sig, err := p.Sign(s, d[:])
	require.NoError(t, err, "the connection still serves")
	require.NoError(t, verifyRaw(ecKey.Public().(*ecdsa.PublicKey), d[:], sig))

	r := dialRaw(t, f.socket)
	require.Equal(t, []byte{0, 0, 0, 1, 0, 0, 0, 0}, r.call(t, initialize))
	template := request(p11rpc.CallFindObjectsInit, "uaA", u64(1), bytes.Repeat([]byte{0}, 5000))
	assert.Equal(t, int64(pkcs11.CKR_ARGUMENTS_BAD), errorRV(r.call(t, template)), "a call without data")
	assert.Equal(t, int64(-1), errorRV(r.call(t, request(p11rpc.CallGetSlotList, "yfu", []byte{1}, []byte{0, 0, 0, 8}))))
	assert.Contains(t, f.logs.String(), "over the size limit")
	assert.Equal(t, 3.0, testutil.ToFloat64(f.srv.m.protocolErrors.WithLabelValues("oversize")))
}
