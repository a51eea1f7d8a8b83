package p11front

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// rv is a CK_RV.
type rv = uint64

const ckrOK rv = pkcs11.CKR_OK

// rvError is a PKCS#11 answer carried as an error inside the front end.
type rvError struct {
	rv  rv
	msg string // for the log only
}

func (e *rvError) Error() string { return rvName(e.rv) + ": " + e.msg }

func rvErr(code rv, msg string) error { return &rvError{rv: code, msg: msg} }

// clusterRV maps an error of a cluster operation (sign, decrypt) to the CK_RV the application sees. What
// the application must never see is a failure that looks like a broken token or connection: a device that
// is down is the cluster's business (it failed over already), so "nothing could serve in time" is
// CKR_FUNCTION_FAILED — a transient failure of this call — and never CKR_DEVICE_ERROR, which some
// applications (NSS) take for a removed token. Caller errors keep their meaning.
func clusterRV(ctx context.Context, err error) rv {
	var re *rvError
	switch {
	case err == nil:
		return ckrOK
	case errors.As(err, &re):
		return re.rv
	case errors.Is(err, rsa.ErrDecryption):
		return pkcs11.CKR_ENCRYPTED_DATA_INVALID
	case errors.Is(err, pkcs11ha.ErrUnsupported):
		return pkcs11.CKR_MECHANISM_PARAM_INVALID
	case errors.Is(err, pkcs11ha.ErrUnknownKey):
		return pkcs11.CKR_KEY_HANDLE_INVALID
	case errors.Is(err, pkcs11ha.ErrUnknownPartition):
		return pkcs11.CKR_SLOT_ID_INVALID
	case ctx.Err() != nil, errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return pkcs11.CKR_FUNCTION_FAILED
	}
	var ie *pkcs11ha.InputError
	if errors.As(err, &ie) {
		return pkcs11.CKR_DATA_LEN_RANGE
	}
	var de *pkcs11ha.DeviceError
	if errors.As(err, &de) && de.Class == pkcs11ha.ClassCaller && de.Code != 0 {
		return rv(de.Code) // the token's own answer to the caller's input, e.g. CKR_DATA_LEN_RANGE
	}
	// ErrNoDevice, ErrClosed, ErrPIN (the sidecar's PIN, not the application's), devices down or busy.
	return pkcs11.CKR_FUNCTION_FAILED
}

// rvOf is the CK_RV of a handler's error: an rvError's code, else CKR_GENERAL_ERROR.
func rvOf(err error) rv {
	var re *rvError
	if errors.As(err, &re) {
		return re.rv
	}
	return pkcs11.CKR_GENERAL_ERROR
}

// rvName is the symbolic name for logs and metrics ("CKR_OK", "CKR_FUNCTION_FAILED"); CKR_OK, every
// successful call's, without the formatting of the general case.
func rvName(code rv) string {
	if code == ckrOK {
		return "CKR_OK"
	}
	s := pkcs11.Error(code).Error() // "pkcs11: 0x30: CKR_DEVICE_ERROR"
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR_0x%X", code)
}
