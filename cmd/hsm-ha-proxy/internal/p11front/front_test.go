package p11front

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"os"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// softFront serves software keys: partition "payments" with rsa-key (01), ec-key (02) and ed-key (04),
// "ledger" with ec-key, and "hidden" granted to nobody; the test's uid is granted payments and ledger.
func softFront(t testing.TB) (*frontT, *fakeBackend) {
	rsaKey, ecKey, edKey := softSigners(t)
	be := newFakeBackend()
	be.add("payments", "rsa-key", []byte{1}, rsaKey)
	be.add("payments", "ec-key", []byte{2}, ecKey)
	be.add("payments", "ed-key", []byte{4}, edKey)
	be.add("ledger", "ec-key", []byte{2}, ecKey)
	be.add("hidden", "rsa-key", []byte{1}, rsaKey)
	auth := fakeAuth{os.Getuid(): {"payments", "ledger"}}
	return startFront(t, be, auth, []string{"payments", "hidden", "ledger"}), be
}

func TestSlotsAndTokens(t *testing.T) {
	f, _ := softFront(t)
	p := openClient(t, f.socket)
	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	require.Equal(t, []uint{1, 3}, slots, "payments and ledger; hidden (slot 2) is not granted")
	ti, err := p.GetTokenInfo(1)
	require.NoError(t, err)
	assert.Equal(t, "payments", ti.Label)
	assert.Equal(t, "pkcs11-ha", ti.Model)
	assert.Equal(t, serialOf("payments"), ti.SerialNumber)
	assert.NotZero(t, ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED)
	assert.Zero(t, ti.Flags&pkcs11.CKF_LOGIN_REQUIRED)
	_, err = p.GetTokenInfo(2)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_SLOT_ID_INVALID), err)
	_, err = p.OpenSession(2, pkcs11.CKF_SERIAL_SESSION)
	assert.Equal(t, pkcs11.Error(pkcs11.CKR_SLOT_ID_INVALID), err)
	mechs, err := p.GetMechanismList(1)
	require.NoError(t, err)
	require.NotEmpty(t, mechs)
	assert.Equal(t, uint(pkcs11.CKM_RSA_PKCS), mechs[0].Mechanism)
}

func TestSignAndVerifyThroughTheClient(t *testing.T) {
	f, _ := softFront(t)
	p := openClient(t, f.socket)
	s := openSession(t, p, "payments")
	rsaPriv := findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "rsa-key")
	ecPriv := findKey(t, p, s, pkcs11.CKO_PRIVATE_KEY, "ec-key")
	rsaKey, ecKey, _ := softSigners(t)
	msg := []byte("hello, front end")
	digest := sha256.Sum256(msg)

	require.NoError(t, p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, ecPriv))
	sig, err := p.Sign(s, digest[:])
	require.NoError(t, err)
	require.Len(t, sig, 64)
	assert.True(t, verifyECDSA(ecKey.Public().(*ecdsa.PublicKey), digest[:], sig))

	require.NoError(t, p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS, nil)}, rsaPriv))
	sig, err = p.Sign(s, msg)
	require.NoError(t, err)
	assert.NoError(t, rsa.VerifyPKCS1v15(rsaKey.Public().(*rsa.PublicKey), crypto.SHA256, digest[:], sig))

	require.NoError(t, p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS,
		pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 32))}, rsaPriv))
	sig, err = p.Sign(s, digest[:])
	require.NoError(t, err)
	assert.NoError(t, rsa.VerifyPSS(rsaKey.Public().(*rsa.PublicKey), crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: 32}))
}
