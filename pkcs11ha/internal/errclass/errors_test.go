package errclass

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// TestClassify covers every code the error table lists (docs/ARCHITECTURE.md, "Error classes"), plus the
// operation-dependent rows.
func TestClassify(t *testing.T) {
	tests := []struct {
		op   string
		rv   uint
		want Class
	}{
		{OpSign, pkcs11.CKR_OK, ClassNone},
		{OpSign, pkcs11.CKR_SESSION_HANDLE_INVALID, ClassSessionBroken},
		{OpSign, pkcs11.CKR_SESSION_CLOSED, ClassSessionBroken},
		{OpSignInit, pkcs11.CKR_OPERATION_ACTIVE, ClassSessionBroken},
		{OpSignInit, pkcs11.CKR_OBJECT_HANDLE_INVALID, ClassHandleStale},
		{OpSignInit, pkcs11.CKR_KEY_HANDLE_INVALID, ClassHandleStale},
		{OpSign, pkcs11.CKR_USER_NOT_LOGGED_IN, ClassLoginLost},
		{OpLogin, pkcs11.CKR_USER_ALREADY_LOGGED_IN, ClassNone},
		{OpSign, pkcs11.CKR_DEVICE_ERROR, ClassDeviceDown},
		{OpSign, pkcs11.CKR_DEVICE_MEMORY, ClassDeviceDown},
		{OpSign, pkcs11.CKR_DEVICE_REMOVED, ClassDeviceDown},
		{OpTokenInfo, pkcs11.CKR_TOKEN_NOT_PRESENT, ClassDeviceDown},
		{OpTokenInfo, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, ClassDeviceDown},
		{OpSign, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, ClassDeviceDown},
		{OpOpenSession, pkcs11.CKR_SLOT_ID_INVALID, ClassDeviceDown},
		{OpSign, pkcs11.CKR_FUNCTION_FAILED, ClassBusy},
		{OpSign, pkcs11.CKR_GENERAL_ERROR, ClassBusy},
		{OpDecrypt, pkcs11.CKR_GENERAL_ERROR, ClassDecryptRefused}, // SoftHSM's bad-OAEP answer
		{OpDecrypt, pkcs11.CKR_FUNCTION_FAILED, ClassDecryptRefused},
		{OpDecryptInit, pkcs11.CKR_FUNCTION_FAILED, ClassBusy},
		{OpSign, pkcs11.CKR_HOST_MEMORY, ClassBusy},
		{OpOpenSession, pkcs11.CKR_SESSION_COUNT, ClassBusy},
		{OpSign, pkcs11.CKR_ARGUMENTS_BAD, ClassCaller},
		{OpSign, pkcs11.CKR_DATA_INVALID, ClassCaller},
		{OpSign, pkcs11.CKR_DATA_LEN_RANGE, ClassCaller},
		{OpSignInit, pkcs11.CKR_MECHANISM_INVALID, ClassCaller},
		{OpSignInit, pkcs11.CKR_MECHANISM_PARAM_INVALID, ClassCaller},
		{OpSignInit, pkcs11.CKR_KEY_SIZE_RANGE, ClassCaller},
		{OpSignInit, pkcs11.CKR_KEY_TYPE_INCONSISTENT, ClassCaller},
		{OpSignInit, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, ClassCaller},
		{OpFindObjects, pkcs11.CKR_TEMPLATE_INCOMPLETE, ClassCaller},
		{OpFindObjects, pkcs11.CKR_TEMPLATE_INCONSISTENT, ClassCaller},
		{OpDecrypt, pkcs11.CKR_ENCRYPTED_DATA_INVALID, ClassDecryptRefused},
		{OpDecrypt, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, ClassDecryptRefused},
		{OpSign, pkcs11.CKR_ENCRYPTED_DATA_INVALID, ClassCaller},
		{OpLogin, pkcs11.CKR_PIN_INCORRECT, ClassCredential},
		{OpLogin, pkcs11.CKR_PIN_EXPIRED, ClassCredential},
		{OpLogin, pkcs11.CKR_PIN_LOCKED, ClassCredential},
		{OpSign, 0x12345, ClassBusy}, // unknown vendor code: ambiguous, fail over
		// Secret keys: a Seal the device fails is the device's (retried elsewhere with the same nonce); an
		// Open whose tag does not match is the caller's (SoftHSM 2.6.1 answers CKR_GENERAL_ERROR).
		{OpEncrypt, pkcs11.CKR_GENERAL_ERROR, ClassBusy},
		{OpEncrypt, pkcs11.CKR_FUNCTION_FAILED, ClassBusy},
		{OpEncrypt, pkcs11.CKR_DEVICE_ERROR, ClassDeviceDown},
		{OpEncrypt, pkcs11.CKR_DATA_LEN_RANGE, ClassCaller},
		{OpEncrypt, pkcs11.CKR_ENCRYPTED_DATA_INVALID, ClassCaller},
		{OpEncryptInit, pkcs11.CKR_MECHANISM_INVALID, ClassCaller},
		{OpEncryptInit, pkcs11.CKR_KEY_HANDLE_INVALID, ClassHandleStale},
		{OpEncryptInit, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, ClassCaller},
	}
	for _, tc := range tests {
		t.Run(tc.op+"/"+CKRName(tc.rv), func(t *testing.T) {
			require.Equal(t, tc.want, classify(tc.op, tc.rv))
		})
	}
}

func TestDeviceErrorMatching(t *testing.T) {
	err := P11Err("eastus-1", "payments", OpLogin, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
	require.ErrorIs(t, err, ErrPIN)
	require.Equal(t, ClassCredential, ClassOf(err))
	require.Equal(t, failover.ClassFatal, failover.ClassOf(Route(err)), "never retried anywhere")
	require.Contains(t, err.Error(), "CKR_PIN_INCORRECT")
	require.Contains(t, err.Error(), "eastus-1")

	err = P11Err("d", "p", OpDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	require.ErrorIs(t, err, rsa.ErrDecryption)

	err = P11Err("d", "p", OpSign, pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	require.ErrorIs(t, err, ErrDeviceDown)
	var de *DeviceError
	require.True(t, errors.As(err, &de))
	require.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), de.Code)

	require.Equal(t, failover.ClassCaller, failover.ClassOf(Route(InputErr("x"))))
	require.Equal(t, failover.ClassCaller, failover.ClassOf(Route(&MechanismError{Device: "d", Mechanism: "m"})))
	require.Equal(t, ClassCaller, ClassOf(InputErr("x")))
	require.Equal(t, "CKR_DEVICE_ERROR", CKRName(pkcs11.CKR_DEVICE_ERROR))
}

// TestClassRoutes: every recovery class means one routing class; the session-level ones, once they escape
// the backend's own retry, are ordinary failures of the device.
func TestClassRoutes(t *testing.T) {
	tests := []struct {
		c     Class
		name  string
		route failover.Class
	}{
		{ClassNone, "none", failover.ClassNone},
		{ClassSessionBroken, "session_broken", failover.ClassBusy},
		{ClassHandleStale, "handle_stale", failover.ClassBusy},
		{ClassLoginLost, "login_lost", failover.ClassBusy},
		{ClassDeviceDown, "device_down", failover.ClassDown},
		{ClassBusy, "busy", failover.ClassBusy},
		{ClassCaller, "caller", failover.ClassCaller},
		{ClassDecryptRefused, "decrypt_refused", failover.ClassRefused},
		{ClassCredential, "credential", failover.ClassFatal},
		{Class(42), "class_42", failover.ClassBusy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.name, tc.c.String())
			require.Equal(t, tc.route, tc.c.route())
			de := &DeviceError{Device: "d", Op: OpSign, Class: tc.c}
			require.Equal(t, tc.route, failover.ClassOf(Route(de)))
			require.Equal(t, tc.c, ClassOf(fmt.Errorf("wrapped: %w", de)))
		})
	}
}

// TestOutcomeLabel: metrics name outcomes in this package's classes, whichever layer decided them.
func TestOutcomeLabel(t *testing.T) {
	timeout := &failover.AttemptTimeoutError{Member: "d", Timeout: time.Millisecond}
	stalled := &failover.AttemptTimeoutError{Member: "d", Timeout: time.Millisecond, Stalled: true}
	loginLost := &DeviceError{Device: "d", Op: OpSign, Class: ClassLoginLost}
	tests := []struct {
		name string
		err  error
		rc   failover.Class
		want string
	}{
		{"success", nil, failover.ClassNone, "none"},
		{"device error", loginLost, failover.ClassBusy, "login_lost"},
		{"our attempt deadline", timeout, failover.ClassDown, "device_down"},
		{"a deadline during a stall", stalled, failover.ClassStalled, "stalled"},
		{"the caller left", context.Canceled, failover.ClassCaller, "caller"},
		{"a context error while the caller waits", context.DeadlineExceeded, failover.ClassBusy, "busy"},
		{"no device, last a device error", FromRouter(&failover.NoMemberError{Tried: 2, Last: loginLost}), failover.ClassBusy, "login_lost"},
		{"input", InputErr("x"), failover.ClassCaller, "caller"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, OutcomeLabel(tc.err, tc.rc))
		})
	}
}

func TestNoDeviceError(t *testing.T) {
	last := &DeviceError{Device: "eastus-1", Op: OpSign, Code: pkcs11.CKR_DEVICE_ERROR, Class: ClassDeviceDown}
	err := FromRouter(&failover.NoMemberError{Tried: 2, Last: last})
	require.ErrorIs(t, err, ErrNoDevice)
	require.ErrorIs(t, err, ErrDeviceDown)
	require.NotErrorIs(t, err, failover.ErrNoMember, "the router's sentinel stays inside")
	require.Equal(t, "pkcs11ha: no device can serve (tried 2): pkcs11ha: device eastus-1: C_Sign: CKR_DEVICE_ERROR (0x30) [device_down]", err.Error())
	require.Equal(t, "pkcs11ha: no device can serve (tried 0)", FromRouter(&failover.NoMemberError{}).Error())
	other := errors.New("x")
	require.Equal(t, other, FromRouter(other))
	require.NoError(t, FromRouter(nil))
}
