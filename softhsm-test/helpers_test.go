package softhsmtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startT starts a topology for one test and closes it with the test. It is harnesstest.Start, which
// this package's own tests cannot import (harnesstest imports this package).
func startT(t testing.TB, opts Options) *Topology {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topo, err := Start(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			topo.LogServerLogs()
		}
		assert.NoError(t, topo.Close())
	})
	return topo
}

// envMu serialises module loads: p11-kit-client.so reads P11_KIT_SERVER_ADDRESS when it is loaded,
// SoftHSM reads SOFTHSM2_CONF in C_Initialize.
var envMu sync.Mutex

// loadModule loads a fresh instance of d's module with d.ModuleEnv and initialises it. The cleanup
// releases a paused or blocked device first (finalizing while a call is blocked can abort the process).
func loadModule(t testing.TB, d *Device) *pkcs11.Ctx {
	t.Helper()
	p, err := tryLoadModule(d)
	require.NoError(t, err)
	t.Cleanup(func() { finalizeModule(t, d, p) })
	return p
}

func tryLoadModule(d *Device) (*pkcs11.Ctx, error) {
	envMu.Lock()
	defer envMu.Unlock()
	saved := map[string]*string{}
	for k, v := range d.ModuleEnv {
		if old, ok := os.LookupEnv(k); ok {
			saved[k] = &old
		} else {
			saved[k] = nil
		}
		os.Setenv(k, v)
	}
	defer func() {
		for k, old := range saved {
			if old == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *old)
			}
		}
	}()
	p := pkcs11.New(d.ModulePath)
	if p == nil {
		return nil, fmt.Errorf("cannot load %s", d.ModulePath)
	}
	if err := p.Initialize(); err != nil {
		p.Destroy()
		return nil, err
	}
	return p, nil
}

func finalizeModule(t testing.TB, d *Device, p *pkcs11.Ctx) {
	if d.Paused() {
		_ = d.Resume()
	}
	if !d.InProcess {
		_ = d.Pass()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Finalize()
	}()
	select {
	case <-done:
		p.Destroy()
	case <-time.After(10 * time.Second):
		t.Errorf("C_Finalize of %s's module did not return", d.Name)
	}
}

// ckr returns the CKR code of a PKCS#11 error, or 0.
func ckr(err error) uint {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

// openSession opens a read-write session on the token with this label.
func openSession(p *pkcs11.Ctx, tokenLabel string) (pkcs11.SessionHandle, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, err
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			return 0, err
		}
		if ti.Label == tokenLabel {
			return p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		}
	}
	return 0, fmt.Errorf("token %q not found in %d slots", tokenLabel, len(slots))
}

// tokenSerial returns the serial of the token with this label.
func tokenSerial(p *pkcs11.Ctx, tokenLabel string) (string, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return "", err
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			return "", err
		}
		if ti.Label == tokenLabel {
			return ti.SerialNumber, nil
		}
	}
	return "", fmt.Errorf("token %q not found", tokenLabel)
}

// findObjects returns the objects of this class and label.
func findObjects(p *pkcs11.Ctx, sh pkcs11.SessionHandle, class uint, label string) ([]pkcs11.ObjectHandle, error) {
	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}); err != nil {
		return nil, err
	}
	objs, _, err := p.FindObjects(sh, 10)
	if ferr := p.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	return objs, err
}

// session is a logged-in session with a private key found.
type session struct {
	p   *pkcs11.Ctx
	sh  pkcs11.SessionHandle
	key pkcs11.ObjectHandle
}

// loginAndFind opens a session on the token, logs in and finds the private key with this label.
func loginAndFind(t testing.TB, p *pkcs11.Ctx, tokenLabel, pin, keyLabel string) session {
	t.Helper()
	sh, err := openSession(p, tokenLabel)
	require.NoError(t, err)
	require.NoError(t, p.Login(sh, pkcs11.CKU_USER, pin))
	objs, err := findObjects(p, sh, pkcs11.CKO_PRIVATE_KEY, keyLabel)
	require.NoError(t, err)
	require.Len(t, objs, 1, "private key %q", keyLabel)
	return session{p: p, sh: sh, key: objs[0]}
}

var testDigest = sha256.Sum256([]byte("softhsmtest"))

// signECDSA signs testDigest with CKM_ECDSA (3 PKCS#11 calls: SignInit, Sign for the length, Sign).
func (s session) signECDSA() ([]byte, error) {
	if err := s.p.SignInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, s.key); err != nil {
		return nil, err
	}
	return s.p.Sign(s.sh, testDigest[:])
}

// verifyECDSA checks a raw r||s PKCS#11 signature of testDigest.
func verifyECDSA(t testing.TB, pub crypto.PublicKey, sig []byte) {
	t.Helper()
	k, ok := pub.(*ecdsa.PublicKey)
	require.True(t, ok, "not an ECDSA key: %T", pub)
	require.Len(t, sig, 2*((k.Curve.Params().BitSize+7)/8))
	r := new(big.Int).SetBytes(sig[:len(sig)/2])
	sv := new(big.Int).SetBytes(sig[len(sig)/2:])
	require.True(t, ecdsa.Verify(k, testDigest[:], r, sv), "ECDSA signature does not verify")
}

// ecPoint reads CKA_EC_POINT of the public key with this label.
func ecPoint(t testing.TB, p *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) []byte {
	t.Helper()
	objs, err := findObjects(p, sh, pkcs11.CKO_PUBLIC_KEY, label)
	require.NoError(t, err)
	require.Len(t, objs, 1, "public key %q", label)
	attrs, err := p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	require.NoError(t, err)
	return attrs[0].Value
}

// wantECPoint is CKA_EC_POINT for an ECDSA public key: the uncompressed point in a DER OCTET STRING.
func wantECPoint(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	k, ok := pub.(*ecdsa.PublicKey)
	require.True(t, ok)
	ecdhKey, err := k.ECDH()
	require.NoError(t, err)
	raw := ecdhKey.Bytes()
	require.Less(t, len(raw), 128)
	return append([]byte{0x04, byte(len(raw))}, raw...)
}

// callResult is the outcome of a PKCS#11 call run in a goroutine.
type callResult struct {
	sig []byte
	err error
	dur time.Duration
}

// goSign runs s.signECDSA in a goroutine.
func goSign(s session) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		t0 := time.Now()
		sig, err := s.signECDSA()
		ch <- callResult{sig: sig, err: err, dur: time.Since(t0)}
	}()
	return ch
}

// smallOptions is a quick topology: the given devices, the payments partition and ec-key only.
func smallOptions(devices ...DeviceSpec) Options {
	return Options{
		Devices:    devices,
		Partitions: DefaultPartitions()[:1],
		Keys:       []KeySpec{{Label: "ec-key", ID: []byte{2}, Kind: KindECP256}},
	}
}

// CKM_EDDSA (PKCS#11 3.0) is not in miekg/pkcs11 v1.1.2.
const ckmEDDSA = 0x1057

func verifyEd25519(pub crypto.PublicKey, msg, sig []byte) bool {
	k, ok := pub.(ed25519.PublicKey)
	return ok && ed25519.Verify(k, msg, sig)
}
