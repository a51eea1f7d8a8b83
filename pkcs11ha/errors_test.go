package pkcs11ha

import (
	"crypto/rsa"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// TestClassify covers every code the error table lists (docs/ARCHITECTURE.md, "Error classes"), plus the
// operation-dependent rows.
func TestClassify(t *testing.T) {
	tests := []struct {
		op   Op
		rv   uint
		want failover.Class
	}{
		{OpSign, pkcs11.CKR_OK, failover.ClassNone},
		{OpSign, pkcs11.CKR_SESSION_HANDLE_INVALID, failover.ClassSessionBroken},
		{OpSign, pkcs11.CKR_SESSION_CLOSED, failover.ClassSessionBroken},
		{OpSignInit, pkcs11.CKR_OPERATION_ACTIVE, failover.ClassSessionBroken},
		{OpSignInit, pkcs11.CKR_OBJECT_HANDLE_INVALID, failover.ClassHandleStale},
		{OpSignInit, pkcs11.CKR_KEY_HANDLE_INVALID, failover.ClassHandleStale},
		{OpSign, pkcs11.CKR_USER_NOT_LOGGED_IN, failover.ClassLoginLost},
		{OpLogin, pkcs11.CKR_USER_ALREADY_LOGGED_IN, failover.ClassNone},
		{OpSign, pkcs11.CKR_DEVICE_ERROR, failover.ClassDeviceDown},
		{OpSign, pkcs11.CKR_DEVICE_MEMORY, failover.ClassDeviceDown},
		{OpSign, pkcs11.CKR_DEVICE_REMOVED, failover.ClassDeviceDown},
		{OpTokenInfo, pkcs11.CKR_TOKEN_NOT_PRESENT, failover.ClassDeviceDown},
		{OpTokenInfo, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, failover.ClassDeviceDown},
		{OpSign, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, failover.ClassDeviceDown},
		{OpOpenSession, pkcs11.CKR_SLOT_ID_INVALID, failover.ClassDeviceDown},
		{OpSign, pkcs11.CKR_FUNCTION_FAILED, failover.ClassBusy},
		{OpSign, pkcs11.CKR_GENERAL_ERROR, failover.ClassBusy},
		{OpDecrypt, pkcs11.CKR_GENERAL_ERROR, failover.ClassDecryptRefused}, // SoftHSM's bad-OAEP answer
		{OpDecrypt, pkcs11.CKR_FUNCTION_FAILED, failover.ClassDecryptRefused},
		{OpDecryptInit, pkcs11.CKR_FUNCTION_FAILED, failover.ClassBusy},
		{OpSign, pkcs11.CKR_HOST_MEMORY, failover.ClassBusy},
		{OpOpenSession, pkcs11.CKR_SESSION_COUNT, failover.ClassBusy},
		{OpSign, pkcs11.CKR_ARGUMENTS_BAD, failover.ClassCaller},
		{OpSign, pkcs11.CKR_DATA_INVALID, failover.ClassCaller},
		{OpSign, pkcs11.CKR_DATA_LEN_RANGE, failover.ClassCaller},
		{OpSignInit, pkcs11.CKR_MECHANISM_INVALID, failover.ClassCaller},
		{OpSignInit, pkcs11.CKR_MECHANISM_PARAM_INVALID, failover.ClassCaller},
		{OpSignInit, pkcs11.CKR_KEY_SIZE_RANGE, failover.ClassCaller},
		{OpSignInit, pkcs11.CKR_KEY_TYPE_INCONSISTENT, failover.ClassCaller},
		{OpSignInit, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, failover.ClassCaller},
		{OpFindObjects, pkcs11.CKR_TEMPLATE_INCOMPLETE, failover.ClassCaller},
		{OpFindObjects, pkcs11.CKR_TEMPLATE_INCONSISTENT, failover.ClassCaller},
		{OpDecrypt, pkcs11.CKR_ENCRYPTED_DATA_INVALID, failover.ClassDecryptRefused},
		{OpDecrypt, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, failover.ClassDecryptRefused},
		{OpSign, pkcs11.CKR_ENCRYPTED_DATA_INVALID, failover.ClassCaller},
		{OpLogin, pkcs11.CKR_PIN_INCORRECT, failover.ClassCredential},
		{OpLogin, pkcs11.CKR_PIN_EXPIRED, failover.ClassCredential},
		{OpLogin, pkcs11.CKR_PIN_LOCKED, failover.ClassCredential},
		{OpSign, 0x12345, failover.ClassBusy}, // unknown vendor code: ambiguous, fail over
	}
	for _, tc := range tests {
		t.Run(string(tc.op)+"/"+CKRName(tc.rv), func(t *testing.T) {
			require.Equal(t, tc.want, Classify(tc.op, tc.rv))
		})
	}
}

func TestDeviceErrorMatching(t *testing.T) {
	err := p11err("eastus-1", "payments", OpLogin, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))
	require.ErrorIs(t, err, ErrPIN)
	require.Equal(t, failover.ClassCredential, failover.ClassOf(err))
	require.Contains(t, err.Error(), "CKR_PIN_INCORRECT")
	require.Contains(t, err.Error(), "eastus-1")

	err = p11err("d", "p", OpDecrypt, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	require.ErrorIs(t, err, rsa.ErrDecryption)

	err = p11err("d", "p", OpSign, pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	require.ErrorIs(t, err, ErrDeviceDown)
	var de *DeviceError
	require.True(t, errors.As(err, &de))
	require.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), de.Code)

	require.Equal(t, failover.ClassCaller, failover.ClassOf(inputErr("x")))
	require.Equal(t, failover.ClassCaller, failover.ClassOf(&MechanismError{Device: "d", Mechanism: "m"}))
	require.Equal(t, "CKR_DEVICE_ERROR", CKRName(pkcs11.CKR_DEVICE_ERROR))
}
