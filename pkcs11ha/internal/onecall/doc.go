// Package onecall makes single-part PKCS#11 calls (C_Sign, C_Decrypt, C_Encrypt, and
// C_EncryptUpdate/C_EncryptFinal) into a
// buffer the caller sized, so that an operation whose output size is known costs one round trip instead of
// two.
//
// miekg/pkcs11's Sign, Decrypt and Encrypt always ask for the output length first (a call with a NULL
// buffer), then call again: three device round trips per signature with C_SignInit, where two would do
// (docs/ARCHITECTURE.md, "One-call operations"). This package calls the same function pointers through the
// module instance a *pkcs11.Ctx already holds, so the module is loaded and initialised by miekg/pkcs11
// alone; on CKR_BUFFER_TOO_SMALL the caller falls back to miekg/pkcs11's size-query path.
package onecall
