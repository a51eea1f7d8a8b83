package p11front

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"net"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc/p11rpctest"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// lcClient is a raw client (p11rpctest) with a session on the payments token: it sends the size queries
// and buffer sizes a real client's library decides for it.
type lcClient struct {
	t *testing.T
	c *p11rpctest.Client
	s uint64
	v byte // the protocol version: the encoding of the calls
}

func dialLifecycle(t *testing.T, f *frontT) *lcClient { return dialLifecycleV(t, f, 0) }

// dialLifecycleV is dialLifecycle speaking protocol version v (2: as p11-kit 0.25.6+ clients do).
func dialLifecycleV(t *testing.T, f *frontT, v byte) *lcClient {
	nc, err := net.Dial("unix", f.socket)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	c, err := p11rpctest.NewClient(nc, v)
	require.NoError(t, err)
	require.Equal(t, v, c.Version)
	_, err = c.RoundTrip(initialize)
	require.NoError(t, err)
	l := &lcClient{t: t, c: c, v: v}
	v0 := l.do(p11rpctest.NewCall(p11rpc.CallOpenSession, v).Ulong(1).Ulong(pkcs11.CKF_SERIAL_SESSION))
	l.s = v0[0].Ulong
	return l
}

func (l *lcClient) do(call *p11rpctest.Call) []p11rpctest.Value {
	l.t.Helper()
	v, err := l.c.Do(call)
	require.NoError(l.t, err)
	return v
}

// rv is the CK_RV of a call: CKR_OK, or its error reply's.
func (l *lcClient) rv(call *p11rpctest.Call) uint64 {
	l.t.Helper()
	_, err := l.c.Do(call)
	var e *p11rpctest.ErrReply
	if errors.As(err, &e) {
		return e.RV
	}
	require.NoError(l.t, err)
	return pkcs11.CKR_OK
}

// find is the handle of the object with label and class.
func (l *lcClient) find(label string, class uint64) uint64 {
	l.t.Helper()
	l.do(p11rpctest.NewCall(p11rpc.CallFindObjectsInit, l.v).Ulong(l.s).Attributes([]p11rpc.Attribute{
		p11rpc.AttrBytes(pkcs11.CKA_LABEL, []byte(label)), p11rpc.AttrUlong(pkcs11.CKA_CLASS, class)}))
	v := l.do(p11rpctest.NewCall(p11rpc.CallFindObjects, l.v).Ulong(l.s).UlongBuffer(4))
	l.do(p11rpctest.NewCall(p11rpc.CallFindObjectsFinal, l.v).Ulong(l.s))
	require.Len(l.t, v[0].Ulongs, 1)
	return v[0].Ulongs[0]
}

func (l *lcClient) init(call p11rpc.CallID, mech *p11rpc.Mechanism, key uint64) uint64 {
	c := p11rpctest.NewCall(call, l.v).Ulong(l.s).Mechanism(mech)
	if call != p11rpc.CallDigestInit {
		c.Ulong(key)
	}
	return l.rv(c)
}

// single is a single-part call (C_Sign, ...) with a buffer of n bytes, or none (a size query).
func (l *lcClient) single(call p11rpc.CallID, in []byte, n uint64, null bool) *p11rpctest.Call {
	return p11rpctest.NewCall(call, l.v).Ulong(l.s).ByteArray(in).ByteBuffer(n, null)
}

// TestOperationLifecycle drives each family through the size-query dance: a size query gets the output's
// length (for a decryption, whose output is not known yet, an upper bound), a buffer one byte short gets
// the exact length, each leaving the operation active; the buffer it needs gets the output, which the
// device computed once, and ends the operation.
func TestOperationLifecycle(t *testing.T) {
	f, be := softFront(t)
	l := dialLifecycle(t, f)
	rsaKey, ecKey, _ := softSigners(t)
	rsaPriv, ecPriv := rsaKey.(*rsa.PrivateKey), ecKey.(*ecdsa.PrivateKey)
	msg := []byte("through the lifecycle")
	digest := sha256.Sum256(msg)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, &rsaPriv.PublicKey, msg)
	require.NoError(t, err)
	tests := []struct {
		name       string
		init, call p11rpc.CallID
		mech       uint64
		key        uint64 // 0 for a digest
		in         []byte
		query, n   uint64 // the size query's answer, the output's length
		check      func(out []byte) error
		device     func() int64 // the device operations so far; nil: done in software
	}{
		{"sign", p11rpc.CallSignInit, p11rpc.CallSign, pkcs11.CKM_ECDSA, l.find("ec-key", pkcs11.CKO_PRIVATE_KEY),
			digest[:], 64, 64, func(out []byte) error { return verifyRaw(&ecPriv.PublicKey, digest[:], out) }, be.signs.Load},
		{"encrypt", p11rpc.CallEncryptInit, p11rpc.CallEncrypt, pkcs11.CKM_RSA_PKCS, l.find("rsa-key", pkcs11.CKO_PUBLIC_KEY),
			msg, 256, 256, func(out []byte) error {
				pt, err := rsa.DecryptPKCS1v15(nil, rsaPriv, out)
				if err == nil && string(pt) != string(msg) {
					err = errors.New("another plaintext")
				}
				return err
			}, nil},
		{"decrypt", p11rpc.CallDecryptInit, p11rpc.CallDecrypt, pkcs11.CKM_RSA_PKCS, l.find("rsa-key", pkcs11.CKO_PRIVATE_KEY),
			ct, 256, uint64(len(msg)), func(out []byte) error {
				if string(out) != string(msg) {
					return errors.New("another plaintext")
				}
				return nil
			}, be.decrypts.Load},
		{"digest", p11rpc.CallDigestInit, p11rpc.CallDigest, pkcs11.CKM_SHA256, 0,
			msg, 32, 32, func(out []byte) error {
				if string(out) != string(digest[:]) {
					return errors.New("another digest")
				}
				return nil
			}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l.t = t
			before := int64(0)
			if tt.device != nil {
				before = tt.device()
			}
			require.Equal(t, uint64(pkcs11.CKR_OK), l.init(tt.init, &p11rpc.Mechanism{Type: tt.mech}, tt.key))
			v := l.do(l.single(tt.call, tt.in, 0, true))
			assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: tt.query}}, v, "a size query")
			v = l.do(l.single(tt.call, tt.in, tt.n-1, false))
			assert.Equal(t, []p11rpctest.Value{{Elem: "ay", Len: tt.n}}, v, "a buffer too small: the exact length")
			v = l.do(l.single(tt.call, tt.in, tt.n, false))
			require.True(t, v[0].Present)
			require.Len(t, v[0].Bytes, int(tt.n))
			require.NoError(t, tt.check(v[0].Bytes), "checked with the Go standard library")
			if tt.device != nil {
				assert.Equal(t, int64(1), tt.device()-before, "the device was asked once")
			}
			assert.Equal(t, uint64(pkcs11.CKR_OPERATION_NOT_INITIALIZED), l.rv(l.single(tt.call, tt.in, tt.n, false)),
				"the output ended the operation")
		})
	}
}

// TestOperationEnds: what ends an operation besides its output, as PKCS#11 has it.
func TestOperationEnds(t *testing.T) {
	f, be := softFront(t)
	l := dialLifecycle(t, f)
	ecPriv := l.find("ec-key", pkcs11.CKO_PRIVATE_KEY)
	ecdsaMech := &p11rpc.Mechanism{Type: pkcs11.CKM_ECDSA}
	d := sha256.Sum256([]byte("x"))
	signFinal := func() uint64 {
		return l.rv(p11rpctest.NewCall(p11rpc.CallSignFinal, 0).Ulong(l.s).ByteBuffer(64, false))
	}
	t.Run("an error", func(t *testing.T) {
		l.t = t
		k := be.parts["payments"]["ec-key"]
		k.setFail(pkcs11ha.ErrNoDevice)
		defer k.setFail(nil)
		require.Equal(t, uint64(pkcs11.CKR_OK), l.init(p11rpc.CallSignInit, ecdsaMech, ecPriv))
		assert.Equal(t, uint64(pkcs11.CKR_FUNCTION_FAILED), l.rv(l.single(p11rpc.CallSign, d[:], 64, false)))
		assert.Equal(t, uint64(pkcs11.CKR_OPERATION_NOT_INITIALIZED), l.rv(l.single(p11rpc.CallSign, d[:], 64, false)))
	})
	t.Run("the single-part call after an Update", func(t *testing.T) {
		l.t = t
		require.Equal(t, uint64(pkcs11.CKR_OK), l.init(p11rpc.CallSignInit, ecdsaMech, ecPriv))
		l.do(p11rpctest.NewCall(p11rpc.CallSignUpdate, 0).Ulong(l.s).ByteArray(d[:16]))
		assert.Equal(t, uint64(pkcs11.CKR_OPERATION_ACTIVE), l.rv(l.single(p11rpc.CallSign, d[:], 64, false)))
		assert.Equal(t, uint64(pkcs11.CKR_OPERATION_NOT_INITIALIZED), signFinal())
	})
	t.Run("gathered input past the bound", func(t *testing.T) {
		l.t = t
		require.Equal(t, uint64(pkcs11.CKR_OK), l.init(p11rpc.CallSignInit, ecdsaMech, ecPriv))
		big := make([]byte, maxRawInput+1)
		assert.Equal(t, uint64(pkcs11.CKR_DATA_LEN_RANGE), l.rv(p11rpctest.NewCall(p11rpc.CallSignUpdate, 0).Ulong(l.s).ByteArray(big)))
		assert.Equal(t, uint64(pkcs11.CKR_OPERATION_NOT_INITIALIZED), signFinal())
	})
	t.Run("an Init with no mechanism (cancel)", func(t *testing.T) {
		l.t = t
		require.Equal(t, uint64(pkcs11.CKR_OK), l.init(p11rpc.CallSignInit, ecdsaMech, ecPriv))
		require.Equal(t, uint64(pkcs11.CKR_OK), l.init(p11rpc.CallSignInit, nil, ecPriv))
		assert.Equal(t, uint64(pkcs11.CKR_OPERATION_NOT_INITIALIZED), signFinal())
	})
	t.Run("a verification, whatever its result", func(t *testing.T) {
		l.t = t
		ecPub := l.find("ec-key", pkcs11.CKO_PUBLIC_KEY)
		require.Equal(t, uint64(pkcs11.CKR_OK), l.init(p11rpc.CallVerifyInit, ecdsaMech, ecPub))
		verify := p11rpctest.NewCall(p11rpc.CallVerify, 0).Ulong(l.s).ByteArray(d[:]).ByteArray(make([]byte, 64))
		assert.Equal(t, uint64(pkcs11.CKR_SIGNATURE_INVALID), l.rv(verify))
		verify = p11rpctest.NewCall(p11rpc.CallVerify, 0).Ulong(l.s).ByteArray(d[:]).ByteArray(make([]byte, 64))
		assert.Equal(t, uint64(pkcs11.CKR_OPERATION_NOT_INITIALIZED), l.rv(verify))
	})
}
