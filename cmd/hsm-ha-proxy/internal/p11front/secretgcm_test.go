package p11front

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"os"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc/p11rpctest"
)

// gcmMech is CKM_AES_GCM with CK_GCM_PARAMS as a p11-kit 0.25+ client sends them.
func gcmMech(iv, aad []byte, tagBits uint64) *p11rpc.Mechanism {
	return &p11rpc.Mechanism{Type: pkcs11.CKM_AES_GCM, Param: p11rpctest.GCMParam(iv, 8*uint64(len(iv)), aad, tagBits)}
}

func goAESGCM(t *testing.T, key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	require.NoError(t, err)
	g, err := cipher.NewGCM(b)
	require.NoError(t, err)
	return g
}

// testGCMRaw drives C_Encrypt/C_Decrypt with CKM_AES_GCM at the RPC level, as a p11-kit 0.25.6+ client
// (protocol version 2) sends them — Debian 12's 0.24.1 client refuses the mechanism before anything is
// sent: single-part with the size query, multi-part (the output comes with the Final call), each output
// checked with crypto/cipher's AES-GCM and the harness's key value; a tampered ciphertext is
// CKR_ENCRYPTED_DATA_INVALID and no device's fault; bad parameters are refused at C_*Init.
func testGCMRaw(t *testing.T, d *devices, f *frontT) {
	l := dialLifecycleV(t, f, 2)
	key := l.find("aes-key", pkcs11.CKO_SECRET_KEY)
	g := goAESGCM(t, d.secrets["aes-key"])
	iv, aad := make([]byte, 12), []byte("header, authenticated")
	_, _ = rand.Read(iv)
	pt := []byte("forty-five bytes of plaintext for AES-GCM...")
	want := g.Seal(nil, iv, pt, aad)
	ok := uint64(pkcs11.CKR_OK)
	update := func(call p11rpc.CallID, part []byte) []p11rpctest.Value {
		return l.do(p11rpctest.NewCall(call, l.v).Ulong(l.s).ByteArray(part).ByteBuffer(uint64(len(part)+16), false))
	}
	final := func(call p11rpc.CallID, n uint64, null bool) *p11rpctest.Call {
		return p11rpctest.NewCall(call, l.v).Ulong(l.s).ByteBuffer(n, null)
	}

	t.Run("single-part", func(t *testing.T) {
		l.t = t
		require.Equal(t, ok, l.init(p11rpc.CallEncryptInit, gcmMech(iv, aad, 128), key))
		assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(want))}}, l.do(l.single(p11rpc.CallEncrypt, pt, 0, true)), "a size query")
		assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(want))}}, l.do(l.single(p11rpc.CallEncrypt, pt, 16, false)))
		v := l.do(l.single(p11rpc.CallEncrypt, pt, uint64(len(want)), false))
		assert.Equal(t, want, v[0].Bytes, "ciphertext ‖ tag, crypto/cipher's AES-GCM with the key's value")

		require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, gcmMech(iv, aad, 128), key))
		assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(pt))}}, l.do(l.single(p11rpc.CallDecrypt, want, 0, true)))
		v = l.do(l.single(p11rpc.CallDecrypt, want, uint64(len(want)), false))
		assert.Equal(t, pt, v[0].Bytes)
	})
	t.Run("multi-part", func(t *testing.T) {
		l.t = t
		require.Equal(t, ok, l.init(p11rpc.CallEncryptInit, gcmMech(iv, aad, 128), key))
		for _, part := range [][]byte{pt[:20], pt[20:]} {
			assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Present: true, Bytes: []byte{}}}, update(p11rpc.CallEncryptUpdate, part))
		}
		assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(want))}}, l.do(final(p11rpc.CallEncryptFinal, 0, true)))
		v := l.do(final(p11rpc.CallEncryptFinal, uint64(len(want)), false))
		assert.Equal(t, want, v[0].Bytes)

		require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, gcmMech(iv, aad, 128), key))
		update(p11rpc.CallDecryptUpdate, want[:30])
		update(p11rpc.CallDecryptUpdate, want[30:])
		v = l.do(final(p11rpc.CallDecryptFinal, uint64(len(want)), false))
		assert.Equal(t, pt, v[0].Bytes)
	})
	t.Run("tampered", func(t *testing.T) {
		l.t = t
		for i := range 8 { // more than breaker.consecutive_failures
			bad := bytes.Clone(want)
			bad[i*5%len(bad)] ^= 1
			require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, gcmMech(iv, aad, 128), key))
			assert.Equal(t, uint64(pkcs11.CKR_ENCRYPTED_DATA_INVALID), l.rv(l.single(p11rpc.CallDecrypt, bad, uint64(len(bad)), false)))
		}
		require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, gcmMech(iv, []byte("other header"), 128), key))
		assert.Equal(t, uint64(pkcs11.CKR_ENCRYPTED_DATA_INVALID), l.rv(l.single(p11rpc.CallDecrypt, want, uint64(len(want)), false)))
		requireDevicesHealthy(t, d)
	})
	t.Run("parameters", func(t *testing.T) {
		l.t = t
		hmacKey := l.find("hmac-key", pkcs11.CKO_SECRET_KEY)
		wrongBits := &p11rpc.Mechanism{Type: pkcs11.CKM_AES_GCM, Param: p11rpctest.GCMParam(iv, 64, nil, 128)}
		for _, tt := range []struct {
			name string
			mech *p11rpc.Mechanism
			key  uint64
			want uint64
		}{
			{"no parameter", &p11rpc.Mechanism{Type: pkcs11.CKM_AES_GCM}, key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"a 64-bit tag", gcmMech(iv, nil, 64), key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"no IV", gcmMech([]byte{}, nil, 128), key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"ulIvBits not the IV's", wrongBits, key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"an HMAC key", gcmMech(iv, nil, 128), hmacKey, pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		} {
			assert.Equal(t, tt.want, l.init(p11rpc.CallEncryptInit, tt.mech, tt.key), tt.name)
		}
		// The harness's devices compute GCM from AES-ECB blocks (policy.gcm_fallback: p11-kit 0.24 between
		// the cluster and them), which takes a 96-bit IV only: another is refused, as the library says.
		require.Equal(t, ok, l.init(p11rpc.CallEncryptInit, gcmMech(make([]byte, 16), nil, 128), key))
		assert.Equal(t, uint64(pkcs11.CKR_MECHANISM_PARAM_INVALID), l.rv(l.single(p11rpc.CallEncrypt, pt, 100, false)))
	})
}

// envNewClient names a p11-kit-client.so of p11-kit 0.25 or later (built from source: Debian 12 ships
// 0.24.1), whose RPC carries CKM_AES_GCM; TestGCMNewClient is skipped without it.
const envNewClient = "PKCS11HA_TEST_P11KIT_CLIENT_NEW"

// TestGCMNewClient: AES-GCM through a p11-kit client that carries it (0.25+; e.g. 0.26.4 built from
// source), with miekg/pkcs11's CK_GCM_PARAMS: the token lists CKM_AES_GCM, C_Encrypt's ciphertext ‖ tag is
// crypto/cipher's, single- and multi-part, C_Decrypt opens it, a tampered one is CKR_ENCRYPTED_DATA_INVALID.
func TestGCMNewClient(t *testing.T) {
	module := os.Getenv(envNewClient)
	if module == "" {
		t.Skipf("%s is not set: no p11-kit client that carries CKM_AES_GCM (0.25+) to test with", envNewClient)
	}
	d, f := startSecretDevices(t)
	p := openClientModule(t, module, f.socket)
	s := openSession(t, p, "payments")
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	mechs, err := p.GetMechanismList(slots[0])
	require.NoError(t, err)
	var types []uint
	for _, m := range mechs {
		types = append(types, m.Mechanism)
	}
	require.Contains(t, types, uint(pkcs11.CKM_AES_GCM), "the newer client passes CKM_AES_GCM on")

	key := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "aes-key")
	g := goAESGCM(t, d.secrets["aes-key"])
	iv, aad, pt := make([]byte, 12), []byte("aad"), []byte("through p11-kit's own client")
	_, _ = rand.Read(iv)
	want := g.Seal(nil, iv, pt, aad)
	gcm := func() []*pkcs11.Mechanism {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, pkcs11.NewGCMParams(iv, aad, 128))}
	}
	require.NoError(t, p.EncryptInit(s, gcm(), key))
	ct, err := p.Encrypt(s, pt)
	require.NoError(t, err)
	assert.Equal(t, want, ct, "ciphertext ‖ tag, crypto/cipher's AES-GCM with the key's value")

	require.NoError(t, p.EncryptInit(s, gcm(), key))
	out, err := p.EncryptUpdate(s, pt[:7])
	require.NoError(t, err)
	more, err := p.EncryptUpdate(s, pt[7:])
	require.NoError(t, err)
	last, err := p.EncryptFinal(s)
	require.NoError(t, err)
	assert.Equal(t, want, append(append(out, more...), last...), "multi-part")

	require.NoError(t, p.DecryptInit(s, gcm(), key))
	got, err := p.Decrypt(s, want)
	require.NoError(t, err)
	assert.Equal(t, pt, got)
	bad := bytes.Clone(want)
	bad[0] ^= 1
	require.NoError(t, p.DecryptInit(s, gcm(), key))
	_, err = p.Decrypt(s, bad)
	assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	requireDevicesHealthy(t, d)
}
