package proxy

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// statusClientClosed is logged (and counted) when the client went away before the answer; nobody reads
// it (nginx's convention).
const statusClientClosed = 499

// codeCanceled is the outcome logged for statusClientClosed.
const codeCanceled = "canceled"

// apiError is an answer of the API's error shape.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

// classify maps an error of the library (or of the request context ctx) to the API's status and code.
// The order matters: a passed request deadline is a 504 whatever the last attempt said; a refused
// decrypt and a refused mechanism are caller errors with codes of their own.
func classify(ctx context.Context, err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return errorf(http.StatusGatewayTimeout, sidecarapi.CodeDeadlineExceeded, "the request deadline passed before a device answered")
	case errors.Is(ctx.Err(), context.Canceled):
		return errorf(statusClientClosed, codeCanceled, "the request was cancelled")
	case errors.Is(err, rsa.ErrDecryption), errors.Is(err, pkcs11ha.ErrAuthentication):
		return errorf(http.StatusBadRequest, sidecarapi.CodeDecryptionFailed, "decryption failed")
	case errors.Is(err, pkcs11ha.ErrMACMismatch):
		return errorf(http.StatusBadRequest, sidecarapi.CodeMACMismatch, "the MAC does not match")
	case errors.Is(err, pkcs11ha.ErrUnsupported):
		return errorf(http.StatusBadRequest, sidecarapi.CodeUnsupportedMechanism, "%s", err.Error())
	case errors.Is(err, pkcs11ha.ErrUnknownPartition):
		return errorf(http.StatusNotFound, sidecarapi.CodeUnknownPartition, "%s", err.Error())
	case errors.Is(err, pkcs11ha.ErrUnknownKey):
		return errorf(http.StatusNotFound, sidecarapi.CodeUnknownKey, "%s", err.Error())
	case errors.Is(err, pkcs11ha.ErrClosed):
		return errorf(http.StatusServiceUnavailable, sidecarapi.CodeShuttingDown, "the sidecar is shutting down")
	case errors.Is(err, pkcs11ha.ErrNoDevice):
		return errorf(http.StatusServiceUnavailable, sidecarapi.CodeNoDevice, "%s", err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return errorf(http.StatusGatewayTimeout, sidecarapi.CodeDeadlineExceeded, "no device answered in time")
	}
	var ie *pkcs11ha.InputError
	if errors.As(err, &ie) {
		return errorf(http.StatusBadRequest, sidecarapi.CodeInvalidInput, "%s", ie.Error())
	}
	if errors.Is(err, context.Canceled) {
		return errorf(http.StatusBadRequest, sidecarapi.CodeInvalidInput, "%s", err.Error())
	}
	var de *pkcs11ha.DeviceError
	if errors.As(err, &de) {
		switch de.Class {
		case pkcs11ha.ClassCaller:
			return errorf(http.StatusBadRequest, sidecarapi.CodeInvalidInput, "%s", err.Error())
		case pkcs11ha.ClassDecryptRefused:
			return errorf(http.StatusBadRequest, sidecarapi.CodeDecryptionFailed, "decryption failed")
		}
		// Every device that could serve failed (down, busy, PIN rejected): nothing can serve now.
		return errorf(http.StatusServiceUnavailable, sidecarapi.CodeNoDevice, "no device could serve the request: %s", de.Error())
	}
	return &apiError{status: http.StatusInternalServerError, code: sidecarapi.CodeInternal, msg: "internal error"}
}

// writeJSON writes v as the JSON answer with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"encoding the answer failed"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
