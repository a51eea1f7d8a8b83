package softhsmtest

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/binary"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// frame is one p11-kit RPC frame: header (code, options length, body length), options, body.
func frame(code uint32, options, body []byte) []byte {
	var h [12]byte
	binary.BigEndian.PutUint32(h[0:], code)
	binary.BigEndian.PutUint32(h[4:], uint32(len(options)))
	binary.BigEndian.PutUint32(h[8:], uint32(len(body)))
	return append(append(h[:], options...), body...)
}

// replyBody is a reply body with the "ay" signature: call id, "ay", present flag, data.
func replyBody(call uint32, present byte, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, call)
	b = binary.BigEndian.AppendUint32(b, 2)
	b = append(b, 'a', 'y', present)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func TestReplyScanner(t *testing.T) {
	sig := bytes.Repeat([]byte{0xAA}, 256)
	var stream []byte
	stream = append(stream, 1)                                                                     // protocol version
	stream = append(stream, frame(0x10, nil, replyBody(34, 1, bytes.Repeat([]byte{0xBB}, 32)))...) // C_Decrypt: untouched
	stream = append(stream, frame(0x11, []byte("opt"), replyBody(rpcCallSign, 0, nil))...)         // C_Sign length query: untouched
	signAt := len(stream)
	stream = append(stream, frame(0x12, nil, replyBody(rpcCallSign, 1, sig))...)
	stream = append(stream, frame(0x13, nil, []byte{0, 0, 0, 6})...) // a short body (C_GetTokenInfo-like)
	sig2At := len(stream)
	stream = append(stream, frame(0x14, nil, replyBody(rpcCallSign, 1, sig[:64]))...)

	flip := func(at, n int) int { return at + 12 + replyPrefix + n/2 } // offset of the flipped byte
	for _, tc := range []struct {
		name    string
		corrupt bool
	}{{"off", false}, {"on", true}} {
		for seed := range uint64(20) {
			got := bytes.Clone(stream)
			s := &replyScanner{}
			rng := rand.New(rand.NewPCG(seed, 7))
			for b := got; len(b) > 0; { // arbitrary chunking
				n := min(len(b), 1+rng.IntN(40))
				s.feed(b[:n], tc.corrupt)
				b = b[n:]
			}
			want := bytes.Clone(stream)
			if tc.corrupt {
				want[flip(signAt, 256)] ^= 1
				want[flip(sig2At, 64)] ^= 1
			}
			require.Equal(t, want, got, "%s, seed %d", tc.name, seed)
		}
	}
}

// TestCorruptSignatures: a real device behind the relay returns a signature that does not verify while
// CorruptSignatures is on, and good ones again once it is off.
func TestCorruptSignatures(t *testing.T) {
	topo := startT(t, smallOptions(DeviceSpec{Name: "d1", Region: "r"}))
	d := topo.Devices[0]
	s := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
	pub := topo.Keys["ec-key"].Public().(*ecdsa.PublicKey)
	ok := func(sig []byte) bool {
		n := len(sig) / 2
		return ecdsa.Verify(pub, testDigest[:], new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:]))
	}
	sig, err := s.signECDSA()
	require.NoError(t, err)
	require.True(t, ok(sig))

	require.NoError(t, d.CorruptSignatures(true))
	for range 3 {
		sig, err = s.signECDSA()
		require.NoError(t, err, "the device answers")
		require.Len(t, sig, 64)
		require.False(t, ok(sig), "with a flipped bit")
	}
	require.NoError(t, d.CorruptSignatures(false))
	sig, err = s.signECDSA()
	require.NoError(t, err)
	require.True(t, ok(sig), "healed")
}
