package sidecarclient

import (
	"context"
	"crypto/rsa"
	"fmt"
	"time"
)

// Algorithm names of the sign and decrypt requests (DESIGN.md, "Sidecar API").
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

	AlgRSAOAEPSHA1   = "RSA_OAEP_SHA1" // MGF1 with the same hash, empty label
	AlgRSAOAEPSHA256 = "RSA_OAEP_SHA256"
	AlgRSAPKCS1      = "RSA_PKCS1"
)

// Error codes of the API's error body {"error":{"code":...,"message":...}}, with their HTTP status.
const (
	// 400: the body is not JSON, not an object, has unknown or duplicate fields, wrong types, or
	// trailing data.
	CodeMalformedJSON = "malformed_json"
	// 400: a field is missing, empty, not standard padded base64, or "digest" and "message" are mixed up.
	CodeInvalidRequest = "invalid_request"
	// 400: "algorithm" is not one of the Alg* names (for this operation).
	CodeUnknownAlgorithm = "unknown_algorithm"
	// 400: the algorithm does not fit the key (e.g. ECDSA_SHA256 on an RSA key, RSA_OAEP_SHA1 on an EC key).
	CodeAlgorithmKeyMismatch = "algorithm_key_mismatch"
	// 400: the digest length is not the hash's size.
	CodeBadDigestLength = "bad_digest_length"
	// 400: the ciphertext length is not the RSA modulus size.
	CodeBadCiphertextLength = "bad_ciphertext_length"
	// 400: the token cannot do the mechanism (e.g. RSA-OAEP with SHA-256 on SoftHSM without
	// policy.oaep_fallback).
	CodeUnsupportedMechanism = "unsupported_mechanism"
	// 400: the token refused the ciphertext (bad padding). Never retried on another device.
	CodeDecryptionFailed = "decryption_failed"
	// 400: any other input the library or the token rejected as a caller error.
	CodeInvalidInput = "invalid_input"
	// 401: the caller's identity (unix uid/gid or client certificate) is not in clients:.
	CodeUnauthenticated = "unauthenticated"
	// 403: the caller is known but the partition is not granted to it.
	CodeForbidden = "forbidden"
	// 404: no such partition.
	CodeUnknownPartition = "unknown_partition"
	// 404: no such key in the partition.
	CodeUnknownKey = "unknown_key"
	// 404: no such endpoint.
	CodeNotFound = "not_found"
	// 405: the endpoint exists but not with this method.
	CodeMethodNotAllowed = "method_not_allowed"
	// 413: the request body is over 1 MiB.
	CodeBodyTooLarge = "body_too_large"
	// 500: an unexpected server-side failure.
	CodeInternal = "internal"
	// 503: no device can serve the request (all down, open breakers, key held nowhere).
	CodeNoDevice = "no_device"
	// 503: the sidecar is shutting down.
	CodeShuttingDown = "shutting_down"
	// 503 from /readyz: some partition has no up device holding all its keys.
	CodeNotReady = "not_ready"
	// 504: the per-request deadline (policy.request_timeout) passed.
	CodeDeadlineExceeded = "deadline_exceeded"
)

// APIError is an error answered by the sidecar (or an HTTP failure that carried no API error body).
type APIError struct {
	StatusCode int    // HTTP status
	Code       string // one of the Code* constants, or "http_<status>" when the body was not an API error
	Message    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("hsm-ha-proxy: %d %s: %s", e.StatusCode, e.Code, e.Message)
}

// Is makes a refused decryption match rsa.ErrDecryption and a 504 match context.DeadlineExceeded, as the
// errors of the in-process library do.
func (e *APIError) Is(target error) bool {
	switch target {
	case rsa.ErrDecryption:
		return e.Code == CodeDecryptionFailed
	case context.DeadlineExceeded:
		return e.Code == CodeDeadlineExceeded
	}
	return false
}

// KeyInfo is the API's KEY object.
type KeyInfo struct {
	Label     string   `json:"label"`
	ID        string   `json:"id"`         // CKA_ID in hex
	Algorithm string   `json:"algorithm"`  // "RSA_2048", "EC_P256", "EC_P384", "EC_P521", "ED25519"
	PublicKey string   `json:"public_key"` // PEM SubjectPublicKeyInfo
	Devices   []string `json:"devices"`    // devices holding the reference key
}

// Status is the answer of GET /v1/status.
type Status struct {
	Ready   bool           `json:"ready"`
	Devices []DeviceStatus `json:"devices"`
}

// DeviceStatus is one device row of Status (the JSON of pkcs11ha.DeviceStatus).
type DeviceStatus struct {
	Name             string            `json:"name"`
	Region           string            `json:"region"`
	Tier             int               `json:"tier"`
	State            string            `json:"state"` // "up" | "degraded" | "down"
	Reason           string            `json:"reason,omitempty"`
	Since            time.Time         `json:"since"`
	Breaker          string            `json:"breaker"` // "closed" | "half-open" | "open"
	EWMA             time.Duration     `json:"ewma_ns"`
	InFlight         int               `json:"in_flight"`
	Abandoned        int               `json:"abandoned"`
	LastError        string            `json:"last_error,omitempty"`
	LastErrorClass   string            `json:"last_error_class,omitempty"`
	Reinits          int64             `json:"reinits"`
	RetiredInstances int64             `json:"retired_instances"`
	Partitions       []PartitionStatus `json:"partitions"`
	ExcludedKeys     map[string]string `json:"excluded_keys,omitempty"`
}

// PartitionStatus is one partition on one device.
type PartitionStatus struct {
	Name  string `json:"name"`
	Open  bool   `json:"open"`
	Error string `json:"error,omitempty"`
}

// Wire bodies of the sign and decrypt calls. Byte fields are standard base64 with padding.
type signRequest struct {
	Digest    string `json:"digest,omitempty"`
	Message   string `json:"message,omitempty"`
	Algorithm string `json:"algorithm"`
}

type signResponse struct {
	Signature string `json:"signature"`
	Device    string `json:"device"`
}

type decryptRequest struct {
	Ciphertext string `json:"ciphertext"`
	Algorithm  string `json:"algorithm"`
}

type decryptResponse struct {
	Plaintext string `json:"plaintext"`
}

type keysResponse struct {
	Keys []KeyInfo `json:"keys"`
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}
