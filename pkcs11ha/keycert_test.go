package pkcs11ha_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// deviceCert reads the certificate labelled label from one device itself (nil when it holds none).
func deviceCert(t *testing.T, d *softhsmtest.Device, label string) []byte {
	t.Helper()
	return harnesstest.DeviceObject(t, d, "payments", "cert", label)
}

// certFor is a certificate of pub (CN = cn) from a throw-away software CA.
func certFor(t *testing.T, pub crypto.PublicKey, cn string, serial int64) []byte {
	t.Helper()
	ca, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, &x509.Certificate{Subject: pkix.Name{CommonName: "CA"}}, pub, ca)
	require.NoError(t, err)
	return der
}

// certOf is the certificate the catalogue presents for label.
func certOf(t *testing.T, cl *pkcs11ha.Cluster, label string) []byte {
	t.Helper()
	keys, err := cl.Keys("payments")
	require.NoError(t, err)
	for _, k := range keys {
		if k.Label == label {
			return k.Certificate
		}
	}
	t.Fatalf("no key %q", label)
	return nil
}

// TestKeysCertificateAndRename: a key's certificate is written to every device (read from each device
// itself), presented, replaced and removed; the key is renamed on every device with its certificate and
// still signs; both refuse while a device is down (a device left out would undo them), changing nothing.
// Runs on either backend (PKCS11HA_TEST_ISOLATION=process for the workers).
func TestKeysCertificateAndRename(t *testing.T) {
	topo := harnesstest.Start(t, softhsmtest.Options{Keys: []softhsmtest.KeySpec{}})
	cl := openKeysCluster(t, topo, "import", "")
	ctx, cancel := context.WithTimeout(pkcs11ha.WithActor(context.Background(), "test"), 2*time.Minute)
	defer cancel()
	ki, err := cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: "lib-ec", Algorithm: pkcs11ha.KeyAlgECP256})
	require.NoError(t, err)

	for i, cn := range []string{"lib-ec", "lib-ec renewed"} {
		der := certFor(t, ki.Public, cn, int64(i+1))
		label, err := cl.PutCertificate(ctx, "payments", "", nil, der)
		require.NoError(t, err)
		require.Equal(t, "lib-ec", label)
		for _, d := range topo.Devices {
			require.Equal(t, der, deviceCert(t, d, "lib-ec"), "the certificate on %s (a new one replaces the old)", d.Name)
		}
		require.Equal(t, der, certOf(t, cl, "lib-ec"), "presented")
	}
	stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, err = cl.PutCertificate(ctx, "payments", "", nil, certFor(t, stranger.Public(), "x", 9))
	require.ErrorIs(t, err, pkcs11ha.ErrUnknownKey)
	_, err = cl.PutCertificate(ctx, "payments", "other", []byte{9}, certFor(t, ki.Public, "x", 10))
	var ie *pkcs11ha.InputError
	require.ErrorAs(t, err, &ie, "neither the key's label nor its ID")

	require.NoError(t, cl.RenameKey(ctx, "payments", "lib-ec", "lib-ec-2"))
	for _, d := range topo.Devices {
		pub := devicePublicKey(t, d, "payments", "lib-ec-2")
		require.NotNil(t, pub, "renamed on %s", d.Name)
		require.True(t, pub.(*ecdsa.PublicKey).Equal(ki.Public))
		require.Nil(t, devicePublicKey(t, d, "payments", "lib-ec"), "no key under the old label on %s", d.Name)
		require.NotNil(t, deviceCert(t, d, "lib-ec-2"), "its certificate renamed with it on %s", d.Name)
	}
	signOnEach(t, topo, cl, "payments", "lib-ec-2")
	_, err = cl.Key(ctx, "payments", "lib-ec")
	require.ErrorIs(t, err, pkcs11ha.ErrUnknownKey)
	_, err = cl.GenerateKey(ctx, "payments", pkcs11ha.KeySpec{Label: "lib-other", Algorithm: pkcs11ha.KeyAlgECP256})
	require.NoError(t, err)
	require.ErrorIs(t, cl.RenameKey(ctx, "payments", "lib-ec-2", "lib-other"), pkcs11ha.ErrKeyExists)

	w2 := topo.Device("westus-2")
	require.NoError(t, w2.Kill())
	waitState(t, cl, "westus-2", "down")
	require.ErrorIs(t, cl.RenameKey(ctx, "payments", "lib-ec-2", "lib-ec-3"), pkcs11ha.ErrQuorum)
	require.ErrorIs(t, cl.DestroyCertificate(ctx, "payments", "lib-ec-2"), pkcs11ha.ErrQuorum)
	for _, d := range topo.Devices[:3] {
		require.NotNil(t, devicePublicKey(t, d, "payments", "lib-ec-2"), "unchanged on %s", d.Name)
		require.NotNil(t, deviceCert(t, d, "lib-ec-2"))
	}
	require.NoError(t, w2.Restart(ctx))
	waitState(t, cl, "westus-2", "up")

	require.NoError(t, cl.DestroyCertificate(ctx, "payments", "lib-ec-2"))
	for _, d := range topo.Devices {
		require.Nil(t, deviceCert(t, d, "lib-ec-2"), "the certificate left %s", d.Name)
		require.NotNil(t, devicePublicKey(t, d, "payments", "lib-ec-2"), "the key stays on %s", d.Name)
	}
	require.Nil(t, certOf(t, cl, "lib-ec-2"))
}
