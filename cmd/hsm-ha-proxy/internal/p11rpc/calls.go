package p11rpc

import "fmt"

// CallID is the first field of every message body: which PKCS#11 function a request calls (or, in a reply,
// answers). 0 is the error reply.
type CallID uint32

// The call ids of p11-kit's protocol. 0–65 are the same in p11-kit 0.24.1 and 0.26.4; 66–87 are the PKCS#11
// 3.0 calls and 88–89 the version 1/2 additions of 0.25/0.26.
const (
	CallError CallID = iota
	CallInitialize
	CallFinalize
	CallGetInfo
	CallGetSlotList
	CallGetSlotInfo
	CallGetTokenInfo
	CallGetMechanismList
	CallGetMechanismInfo
	CallInitToken
	CallOpenSession
	CallCloseSession
	CallCloseAllSessions
	CallGetSessionInfo
	CallInitPIN
	CallSetPIN
	CallGetOperationState
	CallSetOperationState
	CallLogin
	CallLogout
	CallCreateObject
	CallCopyObject
	CallDestroyObject
	CallGetObjectSize
	CallGetAttributeValue
	CallSetAttributeValue
	CallFindObjectsInit
	CallFindObjects
	CallFindObjectsFinal
	CallEncryptInit
	CallEncrypt
	CallEncryptUpdate
	CallEncryptFinal
	CallDecryptInit
	CallDecrypt
	CallDecryptUpdate
	CallDecryptFinal
	CallDigestInit
	CallDigest
	CallDigestUpdate
	CallDigestKey
	CallDigestFinal
	CallSignInit
	CallSign
	CallSignUpdate
	CallSignFinal
	CallSignRecoverInit
	CallSignRecover
	CallVerifyInit
	CallVerify
	CallVerifyUpdate
	CallVerifyFinal
	CallVerifyRecoverInit
	CallVerifyRecover
	CallDigestEncryptUpdate
	CallDecryptDigestUpdate
	CallSignEncryptUpdate
	CallDecryptVerifyUpdate
	CallGenerateKey
	CallGenerateKeyPair
	CallWrapKey
	CallUnwrapKey
	CallDeriveKey
	CallSeedRandom
	CallGenerateRandom
	CallWaitForSlotEvent
	// PKCS#11 3.0 (p11-kit 0.25+).
	CallLoginUser
	CallSessionCancel
	CallMessageEncryptInit
	CallEncryptMessage
	CallEncryptMessageBegin
	CallEncryptMessageNext
	CallMessageEncryptFinal
	CallMessageDecryptInit
	CallDecryptMessage
	CallDecryptMessageBegin
	CallDecryptMessageNext
	CallMessageDecryptFinal
	CallMessageSignInit
	CallSignMessage
	CallSignMessageBegin
	CallSignMessageNext
	CallMessageSignFinal
	CallMessageVerifyInit
	CallVerifyMessage
	CallVerifyMessageBegin
	CallVerifyMessageNext
	CallMessageVerifyFinal
	// Protocol version 1 (C_InitToken2) and 2 (C_DeriveKey2).
	CallInitToken2
	CallDeriveKey2

	callMax // one past the last id
)

// CallSpec is one row of the call table: the request and response signatures as p11-kit spells them.
//
// Signature elements: u = CK_ULONG (8 bytes), y = CK_BYTE, v = CK_VERSION (2 bytes), s = space-padded string,
// z = string, ay/au/aA = arrays of bytes/ulongs/attributes, fy/fu/fA = caller buffers (only their sizes
// travel), M = CK_MECHANISM, P = mechanism parameter update (C_DeriveKey2 replies only).
type CallSpec struct {
	ID       CallID
	Name     string // "C_Sign"; "ERROR" for id 0
	Request  string // "" for the error pseudo-call, which is never a request
	Response string
}

// calls is indexed by CallID; rows copied from p11-kit's rpc-message.h (0.24.1 for 0–65, 0.26.4 for 66–89).
var calls = [callMax]CallSpec{
	{CallError, "ERROR", "", "u"},
	{CallInitialize, "C_Initialize", "ayyay", ""},
	{CallFinalize, "C_Finalize", "", ""},
	{CallGetInfo, "C_GetInfo", "", "vsusv"},
	{CallGetSlotList, "C_GetSlotList", "yfu", "au"},
	{CallGetSlotInfo, "C_GetSlotInfo", "u", "ssuvv"},
	{CallGetTokenInfo, "C_GetTokenInfo", "u", "ssssuuuuuuuuuuuvvs"},
	{CallGetMechanismList, "C_GetMechanismList", "ufu", "au"},
	{CallGetMechanismInfo, "C_GetMechanismInfo", "uu", "uuu"},
	{CallInitToken, "C_InitToken", "uayz", ""},
	{CallOpenSession, "C_OpenSession", "uu", "u"},
	{CallCloseSession, "C_CloseSession", "u", ""},
	{CallCloseAllSessions, "C_CloseAllSessions", "u", ""},
	{CallGetSessionInfo, "C_GetSessionInfo", "u", "uuuu"},
	{CallInitPIN, "C_InitPIN", "uay", ""},
	{CallSetPIN, "C_SetPIN", "uayay", ""},
	{CallGetOperationState, "C_GetOperationState", "ufy", "ay"},
	{CallSetOperationState, "C_SetOperationState", "uayuu", ""},
	{CallLogin, "C_Login", "uuay", ""},
	{CallLogout, "C_Logout", "u", ""},
	{CallCreateObject, "C_CreateObject", "uaA", "u"},
	{CallCopyObject, "C_CopyObject", "uuaA", "u"},
	{CallDestroyObject, "C_DestroyObject", "uu", ""},
	{CallGetObjectSize, "C_GetObjectSize", "uu", "u"},
	{CallGetAttributeValue, "C_GetAttributeValue", "uufA", "aAu"},
	{CallSetAttributeValue, "C_SetAttributeValue", "uuaA", ""},
	{CallFindObjectsInit, "C_FindObjectsInit", "uaA", ""},
	{CallFindObjects, "C_FindObjects", "ufu", "au"},
	{CallFindObjectsFinal, "C_FindObjectsFinal", "u", ""},
	{CallEncryptInit, "C_EncryptInit", "uMu", ""},
	{CallEncrypt, "C_Encrypt", "uayfy", "ay"},
	{CallEncryptUpdate, "C_EncryptUpdate", "uayfy", "ay"},
	{CallEncryptFinal, "C_EncryptFinal", "ufy", "ay"},
	{CallDecryptInit, "C_DecryptInit", "uMu", ""},
	{CallDecrypt, "C_Decrypt", "uayfy", "ay"},
	{CallDecryptUpdate, "C_DecryptUpdate", "uayfy", "ay"},
	{CallDecryptFinal, "C_DecryptFinal", "ufy", "ay"},
	{CallDigestInit, "C_DigestInit", "uM", ""},
	{CallDigest, "C_Digest", "uayfy", "ay"},
	{CallDigestUpdate, "C_DigestUpdate", "uay", ""},
	{CallDigestKey, "C_DigestKey", "uu", ""},
	{CallDigestFinal, "C_DigestFinal", "ufy", "ay"},
	{CallSignInit, "C_SignInit", "uMu", ""},
	{CallSign, "C_Sign", "uayfy", "ay"},
	{CallSignUpdate, "C_SignUpdate", "uay", ""},
	{CallSignFinal, "C_SignFinal", "ufy", "ay"},
	{CallSignRecoverInit, "C_SignRecoverInit", "uMu", ""},
	{CallSignRecover, "C_SignRecover", "uayfy", "ay"},
	{CallVerifyInit, "C_VerifyInit", "uMu", ""},
	{CallVerify, "C_Verify", "uayay", ""},
	{CallVerifyUpdate, "C_VerifyUpdate", "uay", ""},
	{CallVerifyFinal, "C_VerifyFinal", "uay", ""},
	{CallVerifyRecoverInit, "C_VerifyRecoverInit", "uMu", ""},
	{CallVerifyRecover, "C_VerifyRecover", "uayfy", "ay"},
	{CallDigestEncryptUpdate, "C_DigestEncryptUpdate", "uayfy", "ay"},
	{CallDecryptDigestUpdate, "C_DecryptDigestUpdate", "uayfy", "ay"},
	{CallSignEncryptUpdate, "C_SignEncryptUpdate", "uayfy", "ay"},
	{CallDecryptVerifyUpdate, "C_DecryptVerifyUpdate", "uayfy", "ay"},
	{CallGenerateKey, "C_GenerateKey", "uMaA", "u"},
	{CallGenerateKeyPair, "C_GenerateKeyPair", "uMaAaA", "uu"},
	{CallWrapKey, "C_WrapKey", "uMuufy", "ay"},
	{CallUnwrapKey, "C_UnwrapKey", "uMuayaA", "u"},
	{CallDeriveKey, "C_DeriveKey", "uMuaA", "u"},
	{CallSeedRandom, "C_SeedRandom", "uay", ""},
	{CallGenerateRandom, "C_GenerateRandom", "ufy", "ay"},
	{CallWaitForSlotEvent, "C_WaitForSlotEvent", "u", "u"},
	{CallLoginUser, "C_LoginUser", "uuayay", ""},
	{CallSessionCancel, "C_SessionCancel", "uu", ""},
	{CallMessageEncryptInit, "C_MessageEncryptInit", "uMu", ""},
	{CallEncryptMessage, "C_EncryptMessage", "uayayayfy", "ay"},
	{CallEncryptMessageBegin, "C_EncryptMessageBegin", "uayay", ""},
	{CallEncryptMessageNext, "C_EncryptMessageNext", "uayayfyu", "ay"},
	{CallMessageEncryptFinal, "C_MessageEncryptFinal", "u", ""},
	{CallMessageDecryptInit, "C_MessageDecryptInit", "uMu", ""},
	{CallDecryptMessage, "C_DecryptMessage", "uayayayfy", "ay"},
	{CallDecryptMessageBegin, "C_DecryptMessageBegin", "uayay", ""},
	{CallDecryptMessageNext, "C_DecryptMessageNext", "uayayfyu", "ay"},
	{CallMessageDecryptFinal, "C_MessageDecryptFinal", "u", ""},
	{CallMessageSignInit, "C_MessageSignInit", "uMu", ""},
	{CallSignMessage, "C_SignMessage", "uayayfy", "ay"},
	{CallSignMessageBegin, "C_SignMessageBegin", "uay", ""},
	{CallSignMessageNext, "C_SignMessageNext", "uayayyfy", "ay"},
	{CallMessageSignFinal, "C_MessageSignFinal", "u", ""},
	{CallMessageVerifyInit, "C_MessageVerifyInit", "uMu", ""},
	{CallVerifyMessage, "C_VerifyMessage", "uayayay", ""},
	{CallVerifyMessageBegin, "C_VerifyMessageBegin", "uay", ""},
	{CallVerifyMessageNext, "C_VerifyMessageNext", "uayayay", ""},
	{CallMessageVerifyFinal, "C_MessageVerifyFinal", "u", ""},
	{CallInitToken2, "C_InitToken2", "uays", ""},
	{CallDeriveKey2, "C_DeriveKey2", "uMuaA", "uPu"},
}

// Spec returns the table row of id; false for an id the protocol does not define.
func Spec(id CallID) (CallSpec, bool) {
	if id >= callMax {
		return CallSpec{}, false
	}
	return calls[id], true
}

// String is the PKCS#11 name ("C_Sign"), or "call(N)" for an unknown id.
func (c CallID) String() string {
	if s, ok := Spec(c); ok {
		return s.Name
	}
	return fmt.Sprintf("call(%d)", uint32(c))
}
