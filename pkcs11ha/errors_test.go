package pkcs11ha

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
		{opSign, pkcs11.CKR_OK, ClassNone},
		{opSign, pkcs11.CKR_SESSION_HANDLE_INVALID, ClassSessionBroken},
		{opSign, pkcs11.CKR_SESSION_CLOSED, ClassSessionBroken},
		{opSignInit, pkcs11.CKR_OPERATION_ACTIVE, ClassSessionBroken},
		{opSignInit, pkcs11.CKR_OBJECT_HANDLE_INVALID, ClassHandleStale},
		{opSignInit, pkcs11.CKR_KEY_HANDLE_INVALID, ClassHandleStale},
		{opSign, pkcs11.CKR_USER_NOT_LOGGED_IN, ClassLoginLost},
		{opLogin, pkcs11.CKR_USER_ALREADY_LOGGED_IN, ClassNone},
		{opSign, pkcs11.CKR_DEVICE_ERROR, ClassDeviceDown},
		{opSign, pkcs11.CKR_DEVICE_MEMORY, ClassDeviceDown},
		{opSign, pkcs11.CKR_DEVICE_REMOVED, ClassDeviceDown},
		{opTokenInfo, pkcs11.CKR_TOKEN_NOT_PRESENT, ClassDeviceDown},
		{opTokenInfo, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, ClassDeviceDown},
		{opSign, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, ClassDeviceDown},
		{opOpenSession, pkcs11.CKR_SLOT_ID_INVALID, ClassDeviceDown},
		{opSign, pkcs11.CKR_FUNCTION_FAILED, ClassBusy},
		{opSign, pkcs11.CKR_GENERAL_ERROR, ClassBusy},
		{opDecrypt, pkcs11.CKR_GENERAL_ERROR, ClassDecryptRefused}, // SoftHSM's bad-OAEP answer
		{opDecrypt, pkcs11.CKR_FUNCTION_FAILED, ClassDecryptRefused},
		{opDecryptInit, pkcs11.CKR_FUNCTION_FAILED, ClassBusy},
		{opSign, pkcs11.CKR_HOST_MEMORY, ClassBusy},
		{opOpenSession, pkcs11.CKR_SESSION_COUNT, ClassBusy},
		{opSign, pkcs11.CKR_ARGUMENTS_BAD, ClassCaller},
		{opSign, pkcs11.CKR_DATA_INVALID, ClassCaller},
		{opSign, pkcs11.CKR_DATA_LEN_RANGE, ClassCaller},
		{opSignInit, pkcs11.CKR_MECHANISM_INVALID, ClassCaller},
		{opSignInit, pkcs11.CKR_MECHANISM_PARAM_INVALID, ClassCaller},
		{opSignInit, pkcs11.CKR_KEY_SIZE_RANGE, ClassCaller},
		{opSignInit, pkcs11.CKR_KEY_TYPE_INCONSISTENT, ClassCaller},
		{opSignInit, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, ClassCaller},
		{opFindObjects, pkcs11.CKR_TEMPLATE_INCOMPLETE, ClassCaller},
		{opFindObjects, pkcs11.CKR_TEMPLATE_INCONSISTENT, ClassCaller},
		{opDecrypt, pkcs11.CKR_ENCRYPTED_DATA_INVALID, ClassDecryptRefused},
		{opDecrypt, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, ClassDecryptRefused},
		{opSign, pkcs11.CKR_ENCRYPTED_DATA_INVALID, ClassCaller},
		{opLogin, pkcs11.CKR_PIN_INCORRECT, ClassCredential},
		{opLogin, pkcs11.CKR_PIN_EXPIRED, ClassCredential},
		{opLogin, pkcs11.CKR_PIN_LOCKED, ClassCredential},
		{opSign, 0x12345, ClassBusy}, // unknown vendor code: ambiguous, fail over
		// Secret keys: a Seal the device fails is the device's (retried elsewhere with the same nonce); an
		// Open whose tag does not match is the caller's (SoftHSM 2.6.1 answers CKR_GENERAL_ERROR).
		{opEncrypt, pkcs11.CKR_GENERAL_ERROR, ClassBusy},
		{opEncrypt, pkcs11.CKR_FUNCTION_FAILED, ClassBusy},
		{opEncrypt, pkcs11.CKR_DEVICE_ERROR, ClassDeviceDown},
		{opEncrypt, pkcs11.CKR_DATA_LEN_RANGE, ClassCaller},
		{opEncrypt, pkcs11.CKR_ENCRYPTED_DATA_INVALID, ClassCaller},
		{opEncryptInit, pkcs11.CKR_MECHANISM_INVALID, ClassCaller},
		{opEncryptInit, pkcs11.CKR_KEY_HANDLE_INVALID, ClassHandleStale},
		{opEncryptInit, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, ClassCaller},
	}
	for _, tc := range tests {
		t.Run(tc.op+"/"+ckrName(tc.rv), func(t *testing.T) {
			require.Equal(t, tc.want, classify(tc.op, tc.rv))
		})
	}
}

func TestDeviceErrorMatching(t *testing.T) {
	err := p11err("eastus-1", "payments", opLogin, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
	require.ErrorIs(t, err, ErrPIN)
	require.Equal(t, ClassCredential, classOf(err))
	require.Equal(t, failover.ClassFatal, failover.ClassOf(route(err)), "never retried anywhere")
	require.Contains(t, err.Error(), "CKR_PIN_INCORRECT")
	require.Contains(t, err.Error(), "eastus-1")

	err = p11err("d", "p", opDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	require.ErrorIs(t, err, rsa.ErrDecryption)

	err = p11err("d", "p", opSign, pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	require.ErrorIs(t, err, ErrDeviceDown)
	var de *DeviceError
	require.True(t, errors.As(err, &de))
	require.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), de.Code)

	require.Equal(t, failover.ClassCaller, failover.ClassOf(route(inputErr("x"))))
	require.Equal(t, failover.ClassCaller, failover.ClassOf(route(&MechanismError{Device: "d", Mechanism: "m"})))
	require.Equal(t, ClassCaller, classOf(inputErr("x")))
	require.Equal(t, "CKR_DEVICE_ERROR", ckrName(pkcs11.CKR_DEVICE_ERROR))
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
			de := &DeviceError{Device: "d", Op: opSign, Class: tc.c}
			require.Equal(t, tc.route, failover.ClassOf(route(de)))
			require.Equal(t, tc.c, classOf(fmt.Errorf("wrapped: %w", de)))
		})
	}
}

// TestOutcomeLabel: metrics name outcomes in this package's classes, whichever layer decided them.
func TestOutcomeLabel(t *testing.T) {
	timeout := &failover.AttemptTimeoutError{Member: "d", Timeout: time.Millisecond}
	stalled := &failover.AttemptTimeoutError{Member: "d", Timeout: time.Millisecond, Stalled: true}
	loginLost := &DeviceError{Device: "d", Op: opSign, Class: ClassLoginLost}
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
		{"no device, last a device error", fromRouter(&failover.NoMemberError{Tried: 2, Last: loginLost}), failover.ClassBusy, "login_lost"},
		{"input", inputErr("x"), failover.ClassCaller, "caller"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, outcomeLabel(tc.err, tc.rc))
		})
	}
}

func TestNoDeviceError(t *testing.T) {
	last := &DeviceError{Device: "eastus-1", Op: opSign, Code: pkcs11.CKR_DEVICE_ERROR, Class: ClassDeviceDown}
	err := fromRouter(&failover.NoMemberError{Tried: 2, Last: last})
	require.ErrorIs(t, err, ErrNoDevice)
	require.ErrorIs(t, err, ErrDeviceDown)
	require.NotErrorIs(t, err, failover.ErrNoMember, "the router's sentinel stays inside")
	require.Equal(t, "pkcs11ha: no device can serve (tried 2): pkcs11ha: device eastus-1: C_Sign: CKR_DEVICE_ERROR (0x30) [device_down]", err.Error())
	require.Equal(t, "pkcs11ha: no device can serve (tried 0)", fromRouter(&failover.NoMemberError{}).Error())
	other := errors.New("x")
	require.Equal(t, other, fromRouter(other))
	require.NoError(t, fromRouter(nil))
}
