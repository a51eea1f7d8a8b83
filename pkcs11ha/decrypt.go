package pkcs11ha

import (
	"crypto/rsa"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

func oaepMechanism(o *rsa.OAEPOptions, pub *rsa.PublicKey) (devicebackend.MechSpec, error) {
	hm, ok := hashMech[o.Hash]
	if !ok {
		return devicebackend.MechSpec{}, errclass.InputErr("decrypt: OAEP hash %v not supported", o.Hash)
	}
	mgf := o.MGFHash
	if mgf == 0 {
		mgf = o.Hash
	}
	mm, ok := hashMech[mgf]
	if !ok {
		return devicebackend.MechSpec{}, errclass.InputErr("decrypt: OAEP MGF1 hash %v not supported", mgf)
	}
	if pub.Size() < 2*o.Hash.Size()+2 {
		return devicebackend.MechSpec{}, errclass.InputErr("decrypt: key too small for OAEP with %v", o.Hash)
	}
	return devicebackend.MechSpec{Type: pkcs11.CKM_RSA_PKCS_OAEP, OAEPHash: hm.mech, OAEPMGF: mm.mgf, OAEPLabel: o.Label}, nil
}
