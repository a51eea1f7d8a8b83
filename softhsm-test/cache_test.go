package softhsmtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"math/big"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkAllKeys logs in to every partition of d and checks every key d should hold: private and public
// object present, public key equal to the Go key.
func checkAllKeys(t *testing.T, topo *Topology, d *Device) {
	t.Helper()
	p := loadModule(t, d)
	for _, part := range topo.Partitions {
		sh, err := openSession(p, part.TokenLabel)
		require.NoError(t, err)
		require.NoError(t, p.Login(sh, pkcs11.CKU_USER, d.PINs[part.Name]), "%s/%s", d.Name, part.Name)
		serial, err := tokenSerial(p, part.TokenLabel)
		require.NoError(t, err)
		assert.Equal(t, d.Serials[part.Name], serial)
		for _, ks := range topo.KeySpecs {
			key, ok := d.Keys[ks.Label]
			priv, err := findObjects(p, sh, pkcs11.CKO_PRIVATE_KEY, ks.Label)
			require.NoError(t, err)
			pub, err := findObjects(p, sh, pkcs11.CKO_PUBLIC_KEY, ks.Label)
			require.NoError(t, err)
			if !ok {
				assert.Empty(t, priv, "%s/%s/%s", d.Name, part.Name, ks.Label)
				continue
			}
			require.Len(t, priv, 1, "%s/%s/%s", d.Name, part.Name, ks.Label)
			require.Len(t, pub, 1, "%s/%s/%s", d.Name, part.Name, ks.Label)
			switch k := key.Public().(type) {
			case *ecdsa.PublicKey:
				assert.Equal(t, wantECPoint(t, k), ecPoint(t, p, sh, ks.Label), "%s/%s/%s", d.Name, part.Name, ks.Label)
			case *rsa.PublicKey:
				attrs, err := p.GetAttributeValue(sh, pub[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
				require.NoError(t, err)
				assert.Equal(t, 0, k.N.Cmp(new(big.Int).SetBytes(attrs[0].Value)), "%s/%s/%s", d.Name, part.Name, ks.Label)
			case ed25519.PublicKey:
				assert.Equal(t, []byte(k), ecPoint(t, p, sh, ks.Label), "%s/%s/%s (raw point)", d.Name, part.Name, ks.Label)
			}
		}
		require.NoError(t, p.Logout(sh))
		require.NoError(t, p.CloseSession(sh))
	}
}

// TestWarmImageCache starts topologies with the same recipes one after the other and at the same time:
// every device of every topology must hold exactly the keys and PINs it should, with unique serials.
func TestWarmImageCache(t *testing.T) {
	devices := func() []DeviceSpec {
		return []DeviceSpec{
			{Name: "dev-a", Region: "eastus", InProcess: true},
			{Name: "dev-b", Region: "eastus", InProcess: true, DifferentKeys: []string{"ec-key"}},
			{Name: "dev-c", Region: "westus", InProcess: true, MissingKeys: []string{"rsa-key"}, PINOverride: map[string]string{"ledger": "7777"}},
			{Name: "eastus-1", Region: "eastus"},
		}
	}
	serials := map[string]bool{}
	check := func(topo *Topology) {
		for _, d := range topo.Devices {
			checkAllKeys(t, topo, d)
			for _, s := range d.Serials {
				assert.False(t, serials[s], "serial %s reused", s)
				serials[s] = true
			}
		}
	}
	for range 2 {
		check(startT(t, Options{Devices: devices()}))
	}
	var wg sync.WaitGroup
	topos := make([]*Topology, 2)
	errs := make([]error, 2)
	for i := range topos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topos[i], errs[i] = Start(context.Background(), Options{Dir: t.TempDir(), Devices: devices()})
		}()
	}
	wg.Wait()
	for i, topo := range topos {
		require.NoError(t, errs[i])
		t.Cleanup(func() { require.NoError(t, topo.Close()) })
	}
	for _, topo := range topos {
		check(topo)
	}
	// the faults are where they belong
	topo := topos[0]
	assert.NotEqual(t, topo.Keys["ec-key"].Public(), topo.Device("dev-b").Keys["ec-key"].Public())
	assert.NotContains(t, topo.Device("dev-c").Keys, "rsa-key")
	assert.Equal(t, "7777", topo.Device("dev-c").PINs["ledger"])
	assert.Equal(t, "2345", topo.Device("dev-a").PINs["ledger"])
}
