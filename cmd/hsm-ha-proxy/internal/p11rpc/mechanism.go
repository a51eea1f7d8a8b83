package p11rpc

// Mechanism is a decoded CK_MECHANISM. For CKM_RSA_PKCS_PSS (and the hash-and-sign PSS mechanisms) PSS is
// set, for CKM_RSA_PKCS_OAEP OAEP is set; any other mechanism's parameter is Param as sent (nil when none).
type Mechanism struct {
	Type  uint64
	Param []byte
	PSS   *PSSParams
	OAEP  *OAEPParams
}

// PSSParams is CK_RSA_PKCS_PSS_PARAMS.
type PSSParams struct{ Hash, MGF, SaltLen uint64 }

// OAEPParams is CK_RSA_PKCS_OAEP_PARAMS; Label is pSourceData (nil when NULL).
type OAEPParams struct {
	Hash, MGF, Source uint64
	Label             []byte
}
