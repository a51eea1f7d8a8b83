package sidecarapi

// Sign algorithm names (SignRequest.Algorithm).
const (
	AlgRSAPKCS1SHA256 = "RSA_PKCS1_SHA256"
	AlgRSAPKCS1SHA384 = "RSA_PKCS1_SHA384"
	AlgRSAPKCS1SHA512 = "RSA_PKCS1_SHA512"
	AlgRSAPSSSHA256   = "RSA_PSS_SHA256" // salt length = hash length
	AlgRSAPSSSHA384   = "RSA_PSS_SHA384"
	AlgRSAPSSSHA512   = "RSA_PSS_SHA512"
	AlgECDSASHA256    = "ECDSA_SHA256" // DER signature
	AlgECDSASHA384    = "ECDSA_SHA384"
	AlgECDSASHA512    = "ECDSA_SHA512"
	AlgEd25519        = "ED25519" // signs "message", not "digest"
)

// Decrypt algorithm names (DecryptRequest.Algorithm).
const (
	AlgRSAOAEPSHA1   = "RSA_OAEP_SHA1" // MGF1 with the same hash, empty label
	AlgRSAOAEPSHA256 = "RSA_OAEP_SHA256"
	AlgRSAPKCS1      = "RSA_PKCS1"
)
