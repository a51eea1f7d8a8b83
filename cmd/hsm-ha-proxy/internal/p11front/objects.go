package p11front

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// object is one PKCS#11 object the front end presents: the private or the public half of a cluster key, its
// certificate (certobject.go), or a secret key (secretobjects.go). It is immutable once built; a key whose public key (or certificate)
// changes gets a new object under the same handle.
type object struct {
	handle    uint64
	partition string
	label     string
	class     uint64           // CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE or CKO_SECRET_KEY
	pub       crypto.PublicKey // nil for a certificate or a secret key
	attrs     map[uint64]p11rpc.Attribute
	sensitive map[uint64]bool // attributes the object has but never reveals (CKA_PRIVATE_EXPONENT, ...)
	kinds     map[uint64]attrKind
	size      uint64 // for C_GetObjectSize: the sum of the attribute lengths
}

// objKey names an object independently of its handle.
type objKey struct {
	partition, label string
	class            uint64
}

// registry hands out object handles that stay the same for the life of the sidecar, whatever happens to
// the devices: a handle names (partition, key label, class), never a device's object.
type registry struct {
	mu      sync.Mutex
	next    uint64
	handles map[objKey]uint64
	objects map[uint64]*object
	spki    map[uint64][]byte // the public key (a certificate object: the certificate) each object was built from
	skipped map[objKey]bool   // keys not presented, already reported
}

func newRegistry() *registry {
	return &registry{next: 1, handles: map[objKey]uint64{}, objects: map[uint64]*object{}, spki: map[uint64][]byte{},
		skipped: map[objKey]bool{}}
}

// get returns the object with handle h, or nil.
func (r *registry) get(h uint64) *object {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.objects[h]
}

// objectsOf returns the objects of the keys in infos (one partition's keys) and of their certificates,
// building those not seen yet and rebuilding those whose public key or certificate changed. Keys the front end does not present (Ed25519, unknown
// types) are skipped; newlySkipped names those not reported before.
func (r *registry) objectsOf(partition string, infos []pkcs11ha.KeyInfo) (out []*object, newlySkipped []string) {
	out = make([]*object, 0, 3*len(infos))
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ki := range infos {
		if !presentable(ki.Public) {
			if k := (objKey{partition: partition, label: ki.Label}); !r.skipped[k] {
				r.skipped[k] = true
				newlySkipped = append(newlySkipped, ki.Label)
			}
			continue
		}
		spki, err := x509.MarshalPKIXPublicKey(ki.Public)
		if err != nil {
			continue
		}
		for _, class := range []uint64{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			k := objKey{partition: partition, label: ki.Label, class: class}
			h, ok := r.handles[k]
			if !ok {
				h = r.next
				r.next++
				r.handles[k] = h
			}
			if o := r.objects[h]; o == nil || !bytes.Equal(r.spki[h], spki) {
				r.objects[h] = buildObject(h, partition, ki, class, spki)
				r.spki[h] = spki
			}
			out = append(out, r.objects[h])
		}
		if o := r.certObjectOf(partition, ki); o != nil {
			out = append(out, o)
		}
	}
	return out, newlySkipped
}

// presentable tells whether the front end presents a key of this type: RSA and ECDSA on the NIST curves.
// Ed25519 keys are left out: no p11-kit client (0.24 to 0.26) carries CKM_EDDSA, so they could not be used,
// and libp11 0.4.12 cannot even enumerate a token that holds one.
func presentable(pub crypto.PublicKey) bool {
	switch pk := pub.(type) {
	case *rsa.PublicKey:
		return true
	case *ecdsa.PublicKey:
		_, ok := curveOIDs[pk.Curve]
		return ok
	}
	return false
}

var curveOIDs = map[elliptic.Curve]asn1.ObjectIdentifier{
	elliptic.P256(): {1, 2, 840, 10045, 3, 1, 7},
	elliptic.P384(): {1, 3, 132, 0, 34},
	elliptic.P521(): {1, 3, 132, 0, 35},
}

// buildObject builds the attributes of one half of a key.
func buildObject(h uint64, partition string, ki pkcs11ha.KeyInfo, class uint64, spki []byte) *object {
	o := &object{handle: h, partition: partition, label: ki.Label, class: class, pub: ki.Public,
		attrs: map[uint64]p11rpc.Attribute{}, sensitive: map[uint64]bool{}, kinds: map[uint64]attrKind{}}
	id, err := hex.DecodeString(ki.ID)
	if err != nil {
		id = []byte(ki.ID)
	}
	private := class == pkcs11.CKO_PRIVATE_KEY
	o.setUlong(pkcs11.CKA_CLASS, class)
	o.setBools(map[uint64]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: private, pkcs11.CKA_MODIFIABLE: false,
		pkcs11.CKA_COPYABLE: false, pkcs11.CKA_DESTROYABLE: false, pkcs11.CKA_DERIVE: false, pkcs11.CKA_LOCAL: false,
	})
	o.setBytes(pkcs11.CKA_LABEL, []byte(ki.Label))
	o.setBytes(pkcs11.CKA_ID, id)
	o.setBytes(pkcs11.CKA_SUBJECT, []byte{})
	o.setBytes(pkcs11.CKA_START_DATE, []byte{})
	o.setBytes(pkcs11.CKA_END_DATE, []byte{})
	o.setBytes(pkcs11.CKA_PUBLIC_KEY_INFO, spki)
	o.setUlong(pkcs11.CKA_KEY_GEN_MECHANISM, uint64(pkcs11.CK_UNAVAILABLE_INFORMATION))
	if private {
		o.setBools(map[uint64]bool{
			pkcs11.CKA_SIGN: true, pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_UNWRAP: false,
			pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_ALWAYS_SENSITIVE: true,
			pkcs11.CKA_NEVER_EXTRACTABLE: true, pkcs11.CKA_WRAP_WITH_TRUSTED: false, pkcs11.CKA_ALWAYS_AUTHENTICATE: false,
		})
	} else {
		o.setBools(map[uint64]bool{
			pkcs11.CKA_VERIFY: true, pkcs11.CKA_VERIFY_RECOVER: false, pkcs11.CKA_WRAP: false, pkcs11.CKA_TRUSTED: false,
		})
	}
	switch pk := ki.Public.(type) {
	case *rsa.PublicKey:
		o.rsaAttrs(pk, private)
	case *ecdsa.PublicKey:
		o.ecAttrs(pk, private)
	}
	for _, a := range o.attrs {
		o.size += a.CLen()
	}
	return o
}

// rsaAttrs adds the attributes of an RSA key. The private object carries the public parts too (libp11
// and crypto11 read the modulus from it); its private parts exist but are sensitive.
func (o *object) rsaAttrs(pk *rsa.PublicKey, private bool) {
	o.setUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA)
	o.setBytes(pkcs11.CKA_MODULUS, pk.N.Bytes())
	o.setBytes(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(pk.E)).Bytes())
	o.setUlong(pkcs11.CKA_MODULUS_BITS, uint64(pk.N.BitLen()))
	if private {
		o.setBool(pkcs11.CKA_DECRYPT, true)
		for _, t := range []uint64{pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_PRIME_1, pkcs11.CKA_PRIME_2,
			pkcs11.CKA_EXPONENT_1, pkcs11.CKA_EXPONENT_2, pkcs11.CKA_COEFFICIENT} {
			o.sensitive[t] = true
		}
		return
	}
	o.setBool(pkcs11.CKA_ENCRYPT, true)
}

// ecAttrs adds the attributes of an EC key: CKA_EC_PARAMS is the curve's OID, CKA_EC_POINT the DER OCTET
// STRING of the uncompressed point (as the spec says; also on the private object, where libp11 looks).
func (o *object) ecAttrs(pk *ecdsa.PublicKey, private bool) {
	o.setUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC)
	params, _ := asn1.Marshal(curveOIDs[pk.Curve])
	o.setBytes(pkcs11.CKA_EC_PARAMS, params)
	if raw, err := pk.Bytes(); err == nil {
		point, _ := asn1.Marshal(raw)
		o.setBytes(pkcs11.CKA_EC_POINT, point)
	}
	if private {
		o.setBool(pkcs11.CKA_DECRYPT, false)
		o.sensitive[pkcs11.CKA_VALUE] = true
		return
	}
	o.setBool(pkcs11.CKA_ENCRYPT, false)
}

// attrKind is how an attribute's value compares with a template's (C_FindObjectsInit).
type attrKind int

const (
	kindBytes attrKind = iota
	kindUlong
	kindBool
)

func (o *object) setUlong(t, v uint64) {
	o.attrs[t], o.kinds[t] = p11rpc.AttrUlong(t, v), kindUlong
}

func (o *object) setBool(t uint64, v bool) {
	o.attrs[t], o.kinds[t] = p11rpc.AttrBool(t, v), kindBool
}

func (o *object) setBytes(t uint64, v []byte) {
	o.attrs[t], o.kinds[t] = p11rpc.AttrBytes(t, v), kindBytes
}

func (o *object) setBools(m map[uint64]bool) {
	for t, v := range m {
		o.setBool(t, v)
	}
}

// String names the object for logs.
func (o *object) String() string {
	kind := "public"
	switch o.class {
	case pkcs11.CKO_PRIVATE_KEY:
		kind = "private"
	case pkcs11.CKO_CERTIFICATE:
		kind = "certificate"
	case pkcs11.CKO_SECRET_KEY:
		kind = "secret"
	}
	return fmt.Sprintf("%s/%s (%s)", o.partition, o.label, kind)
}
