package pkcs11ha

import (
	"crypto/rsa"

	"github.com/miekg/pkcs11"
)

func oaepMechanism(o *rsa.OAEPOptions, pub *rsa.PublicKey) (mechSpec, error) {
	hm, ok := hashMech[o.Hash]
	if !ok {
		return mechSpec{}, inputErr("decrypt: OAEP hash %v not supported", o.Hash)
	}
	mgf := o.MGFHash
	if mgf == 0 {
		mgf = o.Hash
	}
	mm, ok := hashMech[mgf]
	if !ok {
		return mechSpec{}, inputErr("decrypt: OAEP MGF1 hash %v not supported", mgf)
	}
	if pub.Size() < 2*o.Hash.Size()+2 {
		return mechSpec{}, inputErr("decrypt: key too small for OAEP with %v", o.Hash)
	}
	return mechSpec{Type: pkcs11.CKM_RSA_PKCS_OAEP, OAEPHash: hm.mech, OAEPMGF: mm.mgf, OAEPLabel: o.Label}, nil
}
