package sidecarapi

// ErrorBody is every error answer: {"error":{"code":...,"message":...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error of an ErrorBody. Code is one of the Code* constants; Message is for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes, with their HTTP status.
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
