package p11front

import (
	"encoding/asn1"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// TestKeySpecOf: the templates of C_GenerateKeyPair become the library's KeySpec, or the CK_RV the spec
// gives for what the cluster does not make.
func TestKeySpecOf(t *testing.T) {
	b := func(t uint64, v bool) p11rpc.Attribute { return p11rpc.AttrBool(t, v) }
	u := func(t, v uint64) p11rpc.Attribute { return p11rpc.AttrUlong(t, v) }
	s := func(t uint64, v string) p11rpc.Attribute { return p11rpc.AttrBytes(t, []byte(v)) }
	oid := func(o asn1.ObjectIdentifier) p11rpc.Attribute {
		der, _ := asn1.Marshal(o)
		return p11rpc.AttrBytes(pkcs11.CKA_EC_PARAMS, der)
	}
	p256, p384, k256 := oid(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}), oid(asn1.ObjectIdentifier{1, 3, 132, 0, 34}), oid(asn1.ObjectIdentifier{1, 3, 132, 0, 10})
	rsaM, ecM := &p11rpc.Mechanism{Type: pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN}, &p11rpc.Mechanism{Type: pkcs11.CKM_EC_KEY_PAIR_GEN}
	label, id := s(pkcs11.CKA_LABEL, "k"), p11rpc.AttrBytes(pkcs11.CKA_ID, []byte{0xa, 0xb})
	exp := p11rpc.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1})
	privOK := []p11rpc.Attribute{u(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), b(pkcs11.CKA_TOKEN, true), b(pkcs11.CKA_PRIVATE, true),
		b(pkcs11.CKA_SENSITIVE, true), b(pkcs11.CKA_SIGN, true), label, id}
	tests := []struct {
		name       string
		mech       *p11rpc.Mechanism
		pub, priv  []p11rpc.Attribute
		want       pkcs11ha.KeySpec
		code       rv
		notGranted []string
	}{
		{"pkcs11-tool EC P-256", ecM, []p11rpc.Attribute{u(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), b(pkcs11.CKA_TOKEN, true),
			b(pkcs11.CKA_VERIFY, true), b(pkcs11.CKA_DERIVE, true), p256, u(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), label, id,
			b(pkcs11.CKA_PRIVATE, false)}, append(privOK, b(pkcs11.CKA_DERIVE, true), u(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC)),
			pkcs11ha.KeySpec{Label: "k", ID: []byte{0xa, 0xb}, Algorithm: pkcs11ha.KeyAlgECP256}, ckrOK, []string{"CKA_DERIVE"}},
		{"pkcs11-tool RSA 2048", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), b(pkcs11.CKA_TOKEN, true),
			u(pkcs11.CKA_MODULUS_BITS, 2048), exp, b(pkcs11.CKA_VERIFY, true), b(pkcs11.CKA_ENCRYPT, true), label, id},
			append(privOK, b(pkcs11.CKA_DECRYPT, true)), pkcs11ha.KeySpec{Label: "k", ID: []byte{0xa, 0xb}, Algorithm: pkcs11ha.KeyAlgRSA2048}, ckrOK, nil},
		{"RSA 4096, label in the private template only, no ID", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_MODULUS_BITS, 4096)}, []p11rpc.Attribute{label},
			pkcs11ha.KeySpec{Label: "k", Algorithm: pkcs11ha.KeyAlgRSA4096}, ckrOK, nil},
		{"RSA 3072", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_MODULUS_BITS, 3072), label}, nil, pkcs11ha.KeySpec{Label: "k", Algorithm: pkcs11ha.KeyAlgRSA3072}, ckrOK, nil},
		{"EC P-384", ecM, []p11rpc.Attribute{p384, label}, nil, pkcs11ha.KeySpec{Label: "k", Algorithm: pkcs11ha.KeyAlgECP384}, ckrOK, nil},
		{"RSA 1024", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_MODULUS_BITS, 1024), label}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, nil},
		{"exponent 3", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_MODULUS_BITS, 2048), p11rpc.AttrBytes(pkcs11.CKA_PUBLIC_EXPONENT, []byte{3}), label}, nil,
			pkcs11ha.KeySpec{}, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, nil},
		{"secp256k1", ecM, []p11rpc.Attribute{k256, label}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, nil},
		{"EC params on an RSA key", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_MODULUS_BITS, 2048), p256, label}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, nil},
		{"no modulus size", rsaM, []p11rpc.Attribute{label}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCOMPLETE, nil},
		{"no curve", ecM, []p11rpc.Attribute{label}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCOMPLETE, nil},
		{"no label", ecM, []p11rpc.Attribute{p256}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCOMPLETE, nil},
		{"labels differ", ecM, []p11rpc.Attribute{p256, label}, []p11rpc.Attribute{s(pkcs11.CKA_LABEL, "other")}, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"extractable", ecM, []p11rpc.Attribute{p256, label}, []p11rpc.Attribute{b(pkcs11.CKA_EXTRACTABLE, true)}, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"not sensitive", ecM, []p11rpc.Attribute{p256, label}, []p11rpc.Attribute{b(pkcs11.CKA_SENSITIVE, false)}, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"session key", ecM, []p11rpc.Attribute{p256, label, b(pkcs11.CKA_TOKEN, false)}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"RSA key that does not decrypt", rsaM, []p11rpc.Attribute{u(pkcs11.CKA_MODULUS_BITS, 2048), label}, []p11rpc.Attribute{b(pkcs11.CKA_DECRYPT, false)},
			pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"EC key that decrypts", ecM, []p11rpc.Attribute{p256, label}, []p11rpc.Attribute{b(pkcs11.CKA_DECRYPT, true)}, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"wrong class", ecM, []p11rpc.Attribute{p256, label, u(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"key type of the other mechanism", ecM, []p11rpc.Attribute{p256, label, u(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA)}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"an attribute keys do not have", ecM, []p11rpc.Attribute{p256, label, s(pkcs11.CKA_APPLICATION, "x")}, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, nil},
		{"a subject", ecM, []p11rpc.Attribute{p256, label}, []p11rpc.Attribute{s(pkcs11.CKA_SUBJECT, "CN=x")}, pkcs11ha.KeySpec{}, pkcs11.CKR_TEMPLATE_INCONSISTENT, nil},
		{"DSA", &p11rpc.Mechanism{Type: pkcs11.CKM_DSA_KEY_PAIR_GEN}, nil, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_MECHANISM_INVALID, nil},
		{"a parameter", &p11rpc.Mechanism{Type: pkcs11.CKM_EC_KEY_PAIR_GEN, Param: []byte{1}}, nil, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_MECHANISM_PARAM_INVALID, nil},
		{"no mechanism", nil, nil, nil, pkcs11ha.KeySpec{}, pkcs11.CKR_MECHANISM_INVALID, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, notGranted, err := keySpecOf(tt.mech, tt.pub, tt.priv)
			if tt.code != ckrOK {
				require.Error(t, err)
				assert.Equal(t, rvName(tt.code), rvName(rvOf(err)), err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, spec)
			assert.Equal(t, tt.notGranted, notGranted)
		})
	}
}

// TestRegistryRelabelForget: a rename moves a key's handles to its new label (the objects are rebuilt
// under them); forgetting a key ends its handles, and a new key under the label gets new ones.
func TestRegistryRelabelForget(t *testing.T) {
	_, ecKey, _ := softSigners(t)
	r := newRegistry()
	ki := pkcs11ha.KeyInfo{Label: "a", ID: "02", Public: ecKey.Public()}
	r.objectsOf("p", []pkcs11ha.KeyInfo{ki})
	priv, pub := r.handleOf("p", "a", pkcs11.CKO_PRIVATE_KEY), r.handleOf("p", "a", pkcs11.CKO_PUBLIC_KEY)
	require.NotZero(t, priv)
	r.relabel("p", "a", "b")
	assert.Zero(t, r.handleOf("p", "a", pkcs11.CKO_PRIVATE_KEY))
	assert.Nil(t, r.get(priv), "rebuilt at the next listing")
	ki.Label = "b"
	objs, _ := r.objectsOf("p", []pkcs11ha.KeyInfo{ki})
	require.Len(t, objs, 2)
	assert.Equal(t, []uint64{priv, pub}, []uint64{objs[0].handle, objs[1].handle}, "the same handles")
	assert.Equal(t, "b", r.get(priv).label)

	r.forget("p", "b")
	assert.Nil(t, r.get(priv))
	assert.Nil(t, r.get(pub))
	r.objectsOf("p", []pkcs11ha.KeyInfo{ki})
	assert.NotContains(t, []uint64{priv, pub}, r.handleOf("p", "b", pkcs11.CKO_PRIVATE_KEY), "a new key gets new handles")
}
