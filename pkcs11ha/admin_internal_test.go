package pkcs11ha

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
)

// openAdminCluster opens a cluster on topo with policy.isolation iso and the extra policy.
func openAdminCluster(t *testing.T, topo *softhsmtest.Topology, iso, policy string) *Cluster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: policy}))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	cfg.Policy.Isolation = iso
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := Open(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cl.Close()) })
	return cl
}

// TestAdminPath drives every admin operation on a separate-process device through both backends: a key
// pair generated on the token is found, read, renamed, listed in the device's keys (the cluster's
// catalogue sees it without a restart) and destroyed; an object that is not there is a typed error; a
// paused device does not hold an admin call past its deadline.
func TestAdminPath(t *testing.T) {
	for _, iso := range []string{IsolationNone, IsolationProcess} {
		t.Run(iso, func(t *testing.T) {
			topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
			cl := openAdminCluster(t, topo, iso, "health: {interval: 200ms, down_interval: 100ms}\n")
			be := cl.devices[0].be
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			spec := KeySpec{Label: "admin-ec", Algorithm: KeyAlgECP256, ID: []byte{0xa1}}
			pub, priv := spec.templates(false)
			r, err := be.Admin(ctx, 0, &devicebackend.AdminOp{Kind: devicebackend.AdminGenerateKeyPair, Mech: spec.mechanism(), Template: pub, Private: priv,
				Read: []uint{pkcs11.CKA_CLASS, pkcs11.CKA_LABEL, pkcs11.CKA_EXTRACTABLE}})
			require.NoError(t, err)
			require.Len(t, r.Objects, 2)
			require.Equal(t, uint(pkcs11.CKO_PUBLIC_KEY), devicebackend.UlongOf(devicebackend.Value(r.Objects[0], pkcs11.CKA_CLASS)))
			require.Equal(t, uint(pkcs11.CKO_PRIVATE_KEY), devicebackend.UlongOf(devicebackend.Value(r.Objects[1], pkcs11.CKA_CLASS)))
			require.False(t, devicebackend.BoolOf(devicebackend.Value(r.Objects[1], pkcs11.CKA_EXTRACTABLE)))

			// The device's keys were listed again: the catalogue serves the new key at once.
			require.NotNil(t, be.Keys(0)["admin-ec"], "the device lists the new key")
			k, err := cl.Key(ctx, "payments", "admin-ec")
			require.NoError(t, err)
			require.Equal(t, AlgECP256, k.Algorithm())

			// A sensitive attribute reads as nil, the others still read.
			r, err = be.Admin(ctx, 0, &devicebackend.AdminOp{Kind: devicebackend.AdminFind,
				Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, "admin-ec")},
				Read:     []uint{pkcs11.CKA_VALUE, pkcs11.CKA_ID}})
			require.NoError(t, err)
			require.Len(t, r.Objects, 1)
			require.Nil(t, devicebackend.Value(r.Objects[0], pkcs11.CKA_VALUE))
			require.Equal(t, []byte{0xa1}, devicebackend.Value(r.Objects[0], pkcs11.CKA_ID))

			_, err = be.Admin(ctx, 0, &devicebackend.AdminOp{Kind: devicebackend.AdminSetAttributes,
				Template: []devicebackend.Attr{devicebackend.AttrUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), devicebackend.AttrString(pkcs11.CKA_LABEL, "admin-ec")},
				Set:      []devicebackend.Attr{devicebackend.AttrString(pkcs11.CKA_LABEL, "admin-ec2")}})
			require.NoError(t, err)
			require.NotNil(t, be.Keys(0)["admin-ec2"])

			_, err = be.Admin(ctx, 0, &devicebackend.AdminOp{Kind: devicebackend.AdminWrap, Mech: pkcs11.CKM_AES_KEY_WRAP_PAD,
				Key: []devicebackend.Attr{devicebackend.AttrString(pkcs11.CKA_LABEL, "no such key")}, Template: []devicebackend.Attr{devicebackend.AttrString(pkcs11.CKA_LABEL, "admin-ec2")}})
			var oc *ObjectCountError
			require.ErrorAs(t, err, &oc, "the error crosses the worker boundary typed")
			require.Zero(t, oc.Found)

			r, err = be.Admin(ctx, 0, &devicebackend.AdminOp{Kind: devicebackend.AdminDestroy, Template: []devicebackend.Attr{devicebackend.AttrBytes(pkcs11.CKA_ID, []byte{0xa1})}})
			require.NoError(t, err)
			require.Equal(t, 2, r.Count, "private and public object")
			require.Nil(t, be.Keys(0)["admin-ec2"])

			// A paused device: the call returns at its deadline.
			require.NoError(t, topo.Devices[0].Pause())
			defer func() { require.NoError(t, topo.Devices[0].Resume()) }()
			pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer pcancel()
			_, err = be.Admin(pctx, 0, &devicebackend.AdminOp{Kind: devicebackend.AdminFind, Template: []devicebackend.Attr{devicebackend.AttrString(pkcs11.CKA_LABEL, "x")}})
			require.ErrorIs(t, err, context.DeadlineExceeded)
		})
	}
}
