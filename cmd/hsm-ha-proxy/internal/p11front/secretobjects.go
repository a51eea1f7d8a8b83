package p11front

import (
	"bytes"
	"encoding/hex"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// Secret keys (CKO_SECRET_KEY): each AES and HMAC key of a partition the cluster serves is one object, with
// a handle from the same registry as the key pairs' (so a hot upgrade hands it over with them). Its value
// never leaves the devices: CKA_VALUE exists and is sensitive, and there is no CKA_CHECK_VALUE (the
// spec's is the encryption of the zero block, GCM's hash key; the cluster's check value is another
// computation, docs/ARCHITECTURE.md, "Secret keys").

// secretObjectsOf returns the objects of one partition's secret keys, building those not seen yet and
// rebuilding those whose key changed (another check value under the label).
func (r *registry) secretObjectsOf(partition string, infos []pkcs11ha.SecretKeyInfo) []*object {
	out := make([]*object, 0, len(infos))
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, si := range infos {
		keyType, ok := secretKeyType(si)
		if !ok {
			continue
		}
		k := objKey{partition: partition, label: si.Label, class: pkcs11.CKO_SECRET_KEY}
		h, ok := r.handles[k]
		if !ok {
			h = r.next
			r.next++
			r.handles[k] = h
		}
		fp := []byte(si.Algorithm + "/" + si.CheckValue + "/" + si.ID)
		if o := r.objects[h]; o == nil || !bytes.Equal(r.spki[h], fp) {
			r.objects[h] = buildSecretObject(h, partition, si, keyType)
			r.spki[h] = fp
		}
		out = append(out, r.objects[h])
	}
	return out
}

// secretKeyType is the key's CKA_KEY_TYPE (as the devices hold it, else derived from its algorithm); ok is
// false for a key the front end does not present.
func secretKeyType(si pkcs11ha.SecretKeyInfo) (uint64, bool) {
	switch {
	case strings.HasPrefix(si.Algorithm, "AES_"):
		return pkcs11.CKK_AES, true
	case si.KeyType != 0 && hmacHashOf(si.Algorithm) != 0:
		return uint64(si.KeyType), true
	}
	switch si.Algorithm {
	case pkcs11ha.AlgHMACSHA256:
		return pkcs11.CKK_SHA256_HMAC, true
	case pkcs11ha.AlgHMACSHA384:
		return pkcs11.CKK_SHA384_HMAC, true
	case pkcs11ha.AlgHMACSHA512:
		return pkcs11.CKK_SHA512_HMAC, true
	}
	return 0, false
}

// buildSecretObject builds the attributes of a secret key: an AES key encrypts and decrypts, an HMAC key
// signs and verifies; neither wraps, derives or leaves the token.
func buildSecretObject(h uint64, partition string, si pkcs11ha.SecretKeyInfo, keyType uint64) *object {
	o := &object{handle: h, partition: partition, label: si.Label, class: pkcs11.CKO_SECRET_KEY,
		attrs: map[uint64]p11rpc.Attribute{}, sensitive: map[uint64]bool{pkcs11.CKA_VALUE: true}, kinds: map[uint64]attrKind{}}
	id, err := hex.DecodeString(si.ID)
	if err != nil {
		id = []byte(si.ID)
	}
	aes := keyType == pkcs11.CKK_AES
	o.setUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)
	o.setUlong(pkcs11.CKA_KEY_TYPE, keyType)
	o.setBools(map[uint64]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_MODIFIABLE: false,
		pkcs11.CKA_COPYABLE: false, pkcs11.CKA_DESTROYABLE: false, pkcs11.CKA_DERIVE: false, pkcs11.CKA_LOCAL: false,
		pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_ALWAYS_SENSITIVE: true,
		pkcs11.CKA_NEVER_EXTRACTABLE: true, pkcs11.CKA_WRAP_WITH_TRUSTED: false, pkcs11.CKA_TRUSTED: false,
		pkcs11.CKA_ENCRYPT: aes, pkcs11.CKA_DECRYPT: aes, pkcs11.CKA_SIGN: !aes, pkcs11.CKA_VERIFY: !aes,
		pkcs11.CKA_WRAP: false, pkcs11.CKA_UNWRAP: false, pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_VERIFY_RECOVER: false,
	})
	o.setBytes(pkcs11.CKA_LABEL, []byte(si.Label))
	o.setBytes(pkcs11.CKA_ID, id)
	o.setBytes(pkcs11.CKA_START_DATE, []byte{})
	o.setBytes(pkcs11.CKA_END_DATE, []byte{})
	o.setUlong(pkcs11.CKA_KEY_GEN_MECHANISM, uint64(pkcs11.CK_UNAVAILABLE_INFORMATION))
	if n := secretValueLen(si); n > 0 {
		o.setUlong(pkcs11.CKA_VALUE_LEN, uint64(n))
	}
	for _, a := range o.attrs {
		o.size += a.CLen()
	}
	return o
}

// secretValueLen is the key's length in bytes (CKA_VALUE_LEN): as the devices report it, else an AES
// key's from its algorithm; 0 when unknown.
func secretValueLen(si pkcs11ha.SecretKeyInfo) int {
	if si.ValueLen > 0 {
		return si.ValueLen
	}
	switch si.Algorithm {
	case pkcs11ha.AlgAES128:
		return 16
	case pkcs11ha.AlgAES192:
		return 24
	case pkcs11ha.AlgAES256:
		return 32
	}
	return 0
}

// secretObjectsIn returns the objects of partition's secret keys now.
func (c *conn) secretObjectsIn(partition string) []*object {
	infos, err := c.s.be.SecretKeys(partition)
	if err != nil {
		c.log.Warn("PKCS#11: listing the secret keys of a partition failed", "partition", partition, "err", err)
		return nil
	}
	return c.s.objs.secretObjectsOf(partition, infos)
}
