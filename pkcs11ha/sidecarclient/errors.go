package sidecarclient

import (
	"context"
	"crypto/rsa"
	"fmt"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// APIError is an error answered by the sidecar (or an HTTP failure that carried no API error body).
type APIError struct {
	StatusCode int    // HTTP status
	Code       string // one of the sidecarapi.Code* constants, or "http_<status>" when the body was not an API error
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
		return e.Code == sidecarapi.CodeDecryptionFailed
	case context.DeadlineExceeded:
		return e.Code == sidecarapi.CodeDeadlineExceeded
	}
	return false
}
