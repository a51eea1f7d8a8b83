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

// cbcPadMech is CKM_AES_CBC_PAD with its IV, as a p11-kit 0.25+ client sends it (a byte array).
func cbcPadMech(iv []byte) *p11rpc.Mechanism {
	return &p11rpc.Mechanism{Type: pkcs11.CKM_AES_CBC_PAD, Param: iv}
}

// goCBCPad is crypto/cipher's AES-CBC of data padded with PKCS#7 (RFC 5652 §6.3) — or, with pad false,
// of data as it is (whole blocks, to make ciphertexts whose padding is not valid).
func goCBCPad(t *testing.T, key, iv, data []byte, pad bool) []byte {
	b, err := aes.NewCipher(key)
	require.NoError(t, err)
	if pad {
		n := aes.BlockSize - len(data)%aes.BlockSize
		data = append(bytes.Clone(data), bytes.Repeat([]byte{byte(n)}, n)...)
	}
	out := make([]byte, len(data))
	cipher.NewCBCEncrypter(b, iv).CryptBlocks(out, data)
	return out
}

// testCBCPadRaw drives C_Encrypt/C_Decrypt with CKM_AES_CBC_PAD at the RPC level, as a p11-kit 0.25+
// client (protocol version 2) sends them — Debian 12's 0.24.1 client refuses the mechanism before
// anything is sent: the token lists it, with its flags; single-part with the size query, multi-part (the
// output comes with the Final call), each output checked with crypto/cipher's AES-CBC and the harness's
// key value; a bad padding is CKR_ENCRYPTED_DATA_INVALID and no device's fault; a ciphertext that is not
// whole blocks is CKR_ENCRYPTED_DATA_LEN_RANGE; a bad IV or key is refused at C_*Init. (The harness's
// devices sit behind p11-kit 0.24 too: the cluster computes it under policy.cbc_fallback.)
func testCBCPadRaw(t *testing.T, d *devices, f *frontT) {
	l := dialLifecycleV(t, f, 2)
	key := l.find("aes-key", pkcs11.CKO_SECRET_KEY)
	aesKey := d.secrets["aes-key"]
	iv := make([]byte, 16)
	_, _ = rand.Read(iv)
	pt := []byte("forty-four bytes of plaintext for AES-CBC...")
	want := goCBCPad(t, aesKey, iv, pt, true)
	require.Len(t, want, 48)
	ok := uint64(pkcs11.CKR_OK)
	update := func(call p11rpc.CallID, part []byte) []p11rpctest.Value {
		return l.do(p11rpctest.NewCall(call, l.v).Ulong(l.s).ByteArray(part).ByteBuffer(uint64(len(part)+16), false))
	}
	final := func(call p11rpc.CallID, n uint64, null bool) *p11rpctest.Call {
		return p11rpctest.NewCall(call, l.v).Ulong(l.s).ByteBuffer(n, null)
	}

	t.Run("listed", func(t *testing.T) {
		l.t = t
		v := l.do(p11rpctest.NewCall(p11rpc.CallGetMechanismList, l.v).Ulong(1).UlongBuffer(64))
		assert.Contains(t, v[0].Ulongs, uint64(pkcs11.CKM_AES_CBC_PAD), "a token holding an AES key")
		v = l.do(p11rpctest.NewCall(p11rpc.CallGetMechanismInfo, l.v).Ulong(1).Ulong(pkcs11.CKM_AES_CBC_PAD))
		assert.Equal(t, []uint64{16, 32, pkcs11.CKF_HW | pkcs11.CKF_ENCRYPT | pkcs11.CKF_DECRYPT}, []uint64{v[0].Ulong, v[1].Ulong, v[2].Ulong})
	})
	t.Run("single-part", func(t *testing.T) {
		l.t = t
		for _, n := range []int{0, 1, 16, len(pt)} {
			data := pt[:n]
			ct := goCBCPad(t, aesKey, iv, data, true)
			require.Equal(t, ok, l.init(p11rpc.CallEncryptInit, cbcPadMech(iv), key))
			assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(ct))}}, l.do(l.single(p11rpc.CallEncrypt, data, 0, true)), "%d bytes: a size query", n)
			v := l.do(l.single(p11rpc.CallEncrypt, data, uint64(len(ct)), false))
			assert.Equal(t, ct, v[0].Bytes, "%d bytes: crypto/cipher's AES-CBC of the padded input, with the key's value", n)

			require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, cbcPadMech(iv), key))
			assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(ct))}}, l.do(l.single(p11rpc.CallDecrypt, ct, 0, true)), "an upper bound")
			v = l.do(l.single(p11rpc.CallDecrypt, ct, uint64(len(ct)), false))
			assert.Equal(t, data, v[0].Bytes, n)
		}
	})
	t.Run("multi-part", func(t *testing.T) {
		l.t = t
		require.Equal(t, ok, l.init(p11rpc.CallEncryptInit, cbcPadMech(iv), key))
		for _, part := range [][]byte{pt[:20], pt[20:]} {
			assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Present: true, Bytes: []byte{}}}, update(p11rpc.CallEncryptUpdate, part))
		}
		assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: uint64(len(want))}}, l.do(final(p11rpc.CallEncryptFinal, 0, true)))
		v := l.do(final(p11rpc.CallEncryptFinal, uint64(len(want)), false))
		assert.Equal(t, want, v[0].Bytes)

		require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, cbcPadMech(iv), key))
		update(p11rpc.CallDecryptUpdate, want[:30])
		update(p11rpc.CallDecryptUpdate, want[30:])
		v = l.do(final(p11rpc.CallDecryptFinal, uint64(len(want)), false))
		assert.Equal(t, pt, v[0].Bytes)
	})
	t.Run("bad padding", func(t *testing.T) {
		l.t = t
		blocks := [][]byte{ // decrypt to a last byte of 0, of 17, a broken run
			append(bytes.Repeat([]byte{'x'}, 15), 0),
			append(bytes.Repeat([]byte{'x'}, 15), 17),
			append(bytes.Repeat([]byte{'x'}, 13), 1, 3, 3),
		}
		for i := range 8 { // more than breaker.consecutive_failures
			bad := goCBCPad(t, aesKey, iv, blocks[i%len(blocks)], false)
			require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, cbcPadMech(iv), key))
			assert.Equal(t, uint64(pkcs11.CKR_ENCRYPTED_DATA_INVALID), l.rv(l.single(p11rpc.CallDecrypt, bad, 16, false)))
		}
		for _, n := range []int{15, 17} {
			require.Equal(t, ok, l.init(p11rpc.CallDecryptInit, cbcPadMech(iv), key))
			assert.Equal(t, uint64(pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE), l.rv(l.single(p11rpc.CallDecrypt, want[:n], 48, false)), n)
		}
		requireDevicesHealthy(t, d)
	})
	t.Run("parameters", func(t *testing.T) {
		l.t = t
		hmacKey := l.find("hmac-key", pkcs11.CKO_SECRET_KEY)
		for _, tt := range []struct {
			name string
			mech *p11rpc.Mechanism
			key  uint64
			want uint64
		}{
			{"no IV", &p11rpc.Mechanism{Type: pkcs11.CKM_AES_CBC_PAD}, key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"an 8-byte IV", cbcPadMech(iv[:8]), key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"a 17-byte IV", cbcPadMech(append(bytes.Clone(iv), 0)), key, pkcs11.CKR_MECHANISM_PARAM_INVALID},
			{"an HMAC key", cbcPadMech(iv), hmacKey, pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		} {
			assert.Equal(t, tt.want, l.init(p11rpc.CallEncryptInit, tt.mech, tt.key), tt.name)
			assert.Equal(t, tt.want, l.init(p11rpc.CallDecryptInit, tt.mech, tt.key), tt.name)
		}
	})
	assert.Contains(t, f.logs.String(), "mechanism=CKM_AES_CBC_PAD", "the access log has the operations")
}

// TestCBCPadNewClient: AES-CBC-PAD through a p11-kit client that carries it (0.25+; e.g. 0.26.4 built from
// source; PKCS11HA_TEST_P11KIT_CLIENT_NEW), with miekg/pkcs11: the token lists CKM_AES_CBC_PAD, C_Encrypt's
// output is crypto/cipher's AES-CBC of the padded input, single- and multi-part, C_Decrypt gives the
// plaintext back, a bad padding is CKR_ENCRYPTED_DATA_INVALID and no device's fault.
func TestCBCPadNewClient(t *testing.T) {
	module := os.Getenv(envNewClient)
	if module == "" {
		t.Skipf("%s is not set: no p11-kit client that carries CKM_AES_CBC_PAD (0.25+) to test with", envNewClient)
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
	require.Contains(t, types, uint(pkcs11.CKM_AES_CBC_PAD), "the newer client passes CKM_AES_CBC_PAD on")

	key := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "aes-key")
	aesKey := d.secrets["aes-key"]
	iv := make([]byte, 16)
	_, _ = rand.Read(iv)
	pt := []byte("through p11-kit's own client, padded")
	want := goCBCPad(t, aesKey, iv, pt, true)
	cbc := func() []*pkcs11.Mechanism {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}
	}
	require.NoError(t, p.EncryptInit(s, cbc(), key))
	ct, err := p.Encrypt(s, pt)
	require.NoError(t, err)
	assert.Equal(t, want, ct, "crypto/cipher's AES-CBC of the padded input, with the key's value")

	require.NoError(t, p.EncryptInit(s, cbc(), key))
	out, err := p.EncryptUpdate(s, pt[:7])
	require.NoError(t, err)
	more, err := p.EncryptUpdate(s, pt[7:])
	require.NoError(t, err)
	last, err := p.EncryptFinal(s)
	require.NoError(t, err)
	assert.Equal(t, want, append(append(out, more...), last...), "multi-part")

	require.NoError(t, p.DecryptInit(s, cbc(), key))
	got, err := p.Decrypt(s, want)
	require.NoError(t, err)
	assert.Equal(t, pt, got)
	require.NoError(t, p.DecryptInit(s, cbc(), key))
	out, err = p.DecryptUpdate(s, want[:20])
	require.NoError(t, err)
	more, err = p.DecryptUpdate(s, want[20:])
	require.NoError(t, err)
	last, err = p.DecryptFinal(s)
	require.NoError(t, err)
	assert.Equal(t, pt, append(append(out, more...), last...), "multi-part")
	bad := goCBCPad(t, aesKey, iv, append(bytes.Repeat([]byte{'x'}, 15), 0), false)
	require.NoError(t, p.DecryptInit(s, cbc(), key))
	_, err = p.Decrypt(s, bad)
	assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	requireDevicesHealthy(t, d)
}
