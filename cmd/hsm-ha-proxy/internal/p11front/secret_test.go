package p11front

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"hash"
	"os"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc/p11rpctest"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// The secret keys of the harness's devices in these tests: aes-key (10, AES-256) and hmac-key (11,
// CKK_SHA256_HMAC) in both partitions, generic-key (12, CKK_GENERIC_SECRET: HMAC with any hash) and
// hmac384-key (13, CKK_SHA384_HMAC).
func secretSpecs() []softhsmtest.SecretKeySpec {
	return append(softhsmtest.DefaultSecretKeys(),
		softhsmtest.SecretKeySpec{Label: "generic-key", ID: []byte{0x12}, Kind: softhsmtest.KindGeneric},
		softhsmtest.SecretKeySpec{Label: "hmac384-key", ID: []byte{0x13}, Kind: softhsmtest.KindHMACSHA384})
}

// startSecretDevices is the default topology (four `p11-kit server` devices) holding the secret keys,
// with policy.gcm_fallback and cbc_fallback (the devices sit behind p11-kit 0.24, whose RPC carries neither
// CKM_AES_GCM nor CKM_AES_CBC_PAD), and
// a front end over its cluster granting payments and ledger.
func startSecretDevices(t *testing.T) (*devices, *frontT) {
	t.Helper()
	d := startDevicesOpts(t, softhsmtest.Options{SecretKeys: secretSpecs()}, "gcm_fallback: true\ncbc_fallback: true")
	f := startFront(t, ClusterBackend(d.cl), fakeAuth{os.Getuid(): {"payments", "ledger"}}, d.cl.Config().PartitionNames())
	return d, f
}

// goHMAC is the MAC of data under key, by the Go standard library.
func goHMAC(h func() hash.Hash, key, data []byte) []byte {
	m := hmac.New(h, key)
	m.Write(data)
	return m.Sum(nil)
}

// requireDevicesHealthy: every device is up with its breaker closed (the caller's bad input was never
// counted against one).
func requireDevicesHealthy(t *testing.T, d *devices) {
	t.Helper()
	for _, st := range d.cl.Status() {
		require.Equal(t, "closed", st.Breaker, "%s: a caller's bad MAC or ciphertext is no device failure", st.Name)
		require.Equal(t, "up", st.State, st.Name)
	}
}

// TestSecretKeys: through the stock p11-kit-client.so (Debian's 0.24.1), each partition's secret keys are
// CKO_SECRET_KEY objects with their public attributes and no readable value; HMAC mechanisms are listed
// for a token holding HMAC keys; C_Sign/C_Verify with CKM_SHA*_HMAC, single- and multi-part, are computed
// by the devices (each MAC checked with crypto/hmac against the harness's key value); a wrong MAC is
// CKR_SIGNATURE_INVALID and no device's fault.
func TestSecretKeys(t *testing.T) {
	d, f := startSecretDevices(t)
	p := openClient(t, f.socket)
	s := openSession(t, p, "payments")
	t.Run("objects", func(t *testing.T) { testSecretObjects(t, p, s) })
	t.Run("mechanisms", func(t *testing.T) { testSecretMechanisms(t, p) })
	t.Run("HMAC", func(t *testing.T) { testHMAC(t, d, p, s) })
	t.Run("key types", func(t *testing.T) { testSecretKeyTypes(t, p, s) })
	t.Run("AES-GCM, raw RPC", func(t *testing.T) { testGCMRaw(t, d, f) })
	t.Run("AES-CBC-PAD, raw RPC", func(t *testing.T) { testCBCPadRaw(t, d, f) })
	assert.Contains(t, f.logs.String(), "operation=mac", "the access log has the MACs")
	assert.Contains(t, f.logs.String(), "operation=verify_mac")
}

func testSecretObjects(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle) {
	require.NoError(t, p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}))
	objs, _, err := p.FindObjects(s, 20)
	require.NoError(t, err)
	require.NoError(t, p.FindObjectsFinal(s))
	require.Len(t, objs, 4, "aes-key, hmac-key, generic-key, hmac384-key")
	tests := []struct {
		label       string
		id          byte
		keyType     uint
		valueLen    int
		crypt, sign bool
	}{
		{"aes-key", 0x10, pkcs11.CKK_AES, 32, true, false},
		{"hmac-key", 0x11, pkcs11.CKK_SHA256_HMAC, 32, false, true},
		{"generic-key", 0x12, pkcs11.CKK_GENERIC_SECRET, 64, false, true},
		{"hmac384-key", 0x13, pkcs11.CKK_SHA384_HMAC, 48, false, true},
	}
	for _, tt := range tests {
		h := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, tt.label)
		require.Contains(t, objs, h)
		attrs, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, nil),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil), pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, nil), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		})
		require.NoError(t, err, tt.label)
		assert.Equal(t, []byte{tt.id}, attrs[0].Value, tt.label)
		assert.Equal(t, tt.keyType, ulongOf(attrs[1].Value), tt.label)
		assert.Equal(t, uint(tt.valueLen), ulongOf(attrs[2].Value), tt.label)
		for i, want := range []bool{true, false, tt.crypt, tt.crypt, tt.sign, tt.sign, true} {
			assert.Equal(t, []byte{boolByte(want)}, attrs[3+i].Value, "%s: attribute %#x", tt.label, attrs[3+i].Type)
		}
		_, err = p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE), "%s: the value never leaves the devices", tt.label)
	}
	// A template with the value matches nothing, even the right value: the value is not compared.
	require.NoError(t, p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32))}))
	none, _, err := p.FindObjects(s, 20)
	require.NoError(t, err)
	require.NoError(t, p.FindObjectsFinal(s))
	assert.Empty(t, none)
}

func ulongOf(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- { // CK_ULONG in host (little-endian) order
		v = v<<8 | uint(b[i])
	}
	return v
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// testSecretMechanisms: a token holding HMAC keys lists the HMAC mechanisms; the stock 0.24.1 client drops
// CKM_AES_GCM from the list (it cannot carry it), a newer one passes it on.
func testSecretMechanisms(t *testing.T, p *pkcs11.Ctx) {
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	mechs, err := p.GetMechanismList(slots[0])
	require.NoError(t, err)
	var types []uint
	for _, m := range mechs {
		types = append(types, m.Mechanism)
	}
	for _, m := range []uint{pkcs11.CKM_SHA256_HMAC, pkcs11.CKM_SHA384_HMAC, pkcs11.CKM_SHA512_HMAC} {
		require.Contains(t, types, m)
		info, err := p.GetMechanismInfo(slots[0], []*pkcs11.Mechanism{pkcs11.NewMechanism(m, nil)})
		require.NoError(t, err)
		assert.Equal(t, uint(pkcs11.CKF_HW|pkcs11.CKF_SIGN|pkcs11.CKF_VERIFY), info.Flags)
	}
	assert.NotContains(t, types, uint(pkcs11.CKM_SHA_1_HMAC), "the cluster MACs with SHA-2 only")
}

func testHMAC(t *testing.T, d *devices, p *pkcs11.Ctx, s pkcs11.SessionHandle) {
	data := []byte("a token to authenticate, in two parts")
	tests := []struct {
		label string
		mech  uint
		h     func() hash.Hash
	}{
		{"hmac-key", pkcs11.CKM_SHA256_HMAC, sha256.New},
		{"hmac384-key", pkcs11.CKM_SHA384_HMAC, sha512.New384},
		{"generic-key", pkcs11.CKM_SHA256_HMAC, sha256.New},
		{"generic-key", pkcs11.CKM_SHA384_HMAC, sha512.New384},
		{"generic-key", pkcs11.CKM_SHA512_HMAC, sha512.New},
	}
	for _, tt := range tests {
		key := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, tt.label)
		want := goHMAC(tt.h, d.secrets[tt.label], data)
		name := tt.label + " " + mechLabel(uint64(tt.mech))

		require.NoError(t, p.SignInit(s, mechOf(tt.mech, nil), key), name)
		mac, err := p.Sign(s, data)
		require.NoError(t, err, name)
		assert.Equal(t, want, mac, "%s: the devices' MAC is crypto/hmac's with the key's value", name)

		require.NoError(t, p.SignInit(s, mechOf(tt.mech, nil), key))
		require.NoError(t, p.SignUpdate(s, data[:10]))
		require.NoError(t, p.SignUpdate(s, data[10:]))
		mac, err = p.SignFinal(s)
		require.NoError(t, err, name)
		assert.Equal(t, want, mac, "%s: multi-part", name)

		require.NoError(t, p.VerifyInit(s, mechOf(tt.mech, nil), key))
		assert.NoError(t, p.Verify(s, data, want), name)
		require.NoError(t, p.VerifyInit(s, mechOf(tt.mech, nil), key))
		require.NoError(t, p.VerifyUpdate(s, data[:5]))
		require.NoError(t, p.VerifyUpdate(s, data[5:]))
		assert.NoError(t, p.VerifyFinal(s, want), "%s: multi-part verify", name)

		bad := bytes.Clone(want)
		bad[0] ^= 1
		for range 3 { // 15 refusals in all, more than breaker.consecutive_failures
			require.NoError(t, p.VerifyInit(s, mechOf(tt.mech, nil), key))
			assert.ErrorIs(t, p.Verify(s, data, bad), pkcs11.Error(pkcs11.CKR_SIGNATURE_INVALID), name)
		}
		require.NoError(t, p.VerifyInit(s, mechOf(tt.mech, nil), key))
		assert.ErrorIs(t, p.Verify(s, data, want[:len(want)-1]), pkcs11.Error(pkcs11.CKR_SIGNATURE_LEN_RANGE), name)
	}
	requireDevicesHealthy(t, d)
}

// testSecretKeyTypes: a mechanism the key cannot serve is refused at C_*Init, before any device call.
func testSecretKeyTypes(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle) {
	aesKey := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "aes-key")
	hmacKey := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "hmac-key")
	h384 := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "hmac384-key")
	rsaPriv := findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "rsa-key")
	tests := []struct {
		name string
		init func() error
		want uint
	}{
		{"a CKK_SHA256_HMAC key with SHA-384", func() error { return p.SignInit(s, mechOf(pkcs11.CKM_SHA384_HMAC, nil), hmacKey) },
			pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		{"a CKK_SHA384_HMAC key with SHA-256", func() error { return p.VerifyInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), h384) },
			pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		{"an AES key with HMAC", func() error { return p.SignInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), aesKey) },
			pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		{"an HMAC key with RSA", func() error { return p.SignInit(s, mechOf(pkcs11.CKM_RSA_PKCS, nil), hmacKey) },
			pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		{"an RSA key with HMAC", func() error { return p.SignInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), rsaPriv) },
			pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		{"an AES key with RSA decryption", func() error { return p.DecryptInit(s, mechOf(pkcs11.CKM_RSA_PKCS, nil), aesKey) },
			pkcs11.CKR_KEY_TYPE_INCONSISTENT},
		{"HMAC to encrypt", func() error { return p.EncryptInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), hmacKey) },
			pkcs11.CKR_MECHANISM_INVALID},
	}
	for _, tt := range tests {
		assert.ErrorIs(t, tt.init(), pkcs11.Error(tt.want), tt.name)
	}
}

// TestSecretKeysHandOver: a hot upgrade hands the secret keys' object handles over with the key pairs':
// an HMAC begun (C_SignUpdate) in the old process ends in the new one, under the same key handle, and the
// MAC is crypto/hmac's; the handle still names the key for new operations.
func TestSecretKeysHandOver(t *testing.T) {
	d, f := startSecretDevices(t)
	p := openClient(t, f.socket)
	s := openSession(t, p, "payments")
	key := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "hmac-key")
	aesKey := findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "aes-key")
	first, second := []byte("begun in the old process, "), []byte("ended in the new one")
	want := goHMAC(sha256.New, d.secrets["hmac-key"], append(bytes.Clone(first), second...))
	require.NoError(t, p.SignInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), key))
	require.NoError(t, p.SignUpdate(s, first))
	require.NoError(t, p.VerifyInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), key))
	require.NoError(t, p.VerifyUpdate(s, first))

	moveConnections(t, f, ClusterBackend(d.cl), d.cl.Config().PartitionNames())

	require.NoError(t, p.SignUpdate(s, second))
	mac, err := p.SignFinal(s)
	require.NoError(t, err)
	assert.Equal(t, want, mac, "the MAC begun in one process and ended in the other")
	require.NoError(t, p.VerifyUpdate(s, second))
	require.NoError(t, p.VerifyFinal(s, want))
	assert.Equal(t, key, findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "hmac-key"), "the same handle")
	assert.Equal(t, aesKey, findKey(t, p, s, pkcs11.CKO_SECRET_KEY, "aes-key"), "the same handle")
	require.NoError(t, p.SignInit(s, mechOf(pkcs11.CKM_SHA256_HMAC, nil), key))
	mac, err = p.Sign(s, second)
	require.NoError(t, err)
	assert.Equal(t, goHMAC(sha256.New, d.secrets["hmac-key"], second), mac)
}

// TestSecretMechanismsNeedKeys: a token without secret keys lists no HMAC or AES mechanism and
// answers C_GetMechanismInfo for them with CKR_MECHANISM_INVALID (the fake cluster has key pairs only).
func TestSecretMechanismsNeedKeys(t *testing.T) {
	f, _ := softFront(t)
	p := openClient(t, f.socket)
	mechs, err := p.GetMechanismList(1)
	require.NoError(t, err)
	require.NotEmpty(t, mechs)
	for _, m := range mechs {
		assert.NotContains(t, []uint{pkcs11.CKM_SHA256_HMAC, pkcs11.CKM_SHA384_HMAC, pkcs11.CKM_SHA512_HMAC, pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_CBC_PAD}, m.Mechanism)
	}
	_, err = p.GetMechanismInfo(1, mechOf(pkcs11.CKM_SHA256_HMAC, nil))
	assert.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID))
	l := dialLifecycleV(t, f, 2) // p11-kit 0.24's client does not carry CKM_AES_CBC_PAD: ask as a newer one
	assert.Equal(t, uint64(pkcs11.CKR_MECHANISM_INVALID), l.rv(p11rpctest.NewCall(p11rpc.CallGetMechanismInfo, l.v).Ulong(1).Ulong(pkcs11.CKM_AES_CBC_PAD)))
	_, err = p.GetMechanismInfo(1, mechOf(pkcs11.CKM_RSA_PKCS, nil))
	assert.NoError(t, err)
}
