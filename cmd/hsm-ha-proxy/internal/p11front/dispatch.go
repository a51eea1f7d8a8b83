package p11front

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// handler serves one call as p11-kit's rpc-server.c does, in three blocks: IN, it reads every argument
// from req in signature order and checks req.Finish once (a Request keeps its first error); PROCESS, it
// does the work; OUT, it writes the results to w. An error becomes an error reply: an *rvError carries
// the CK_RV. The calls of sign, verify, encrypt, decrypt and digest share one lifecycle (lifecycle.go).
type handler func(c *conn, req *p11rpc.Request, w *p11rpc.Reply) error

// handlers is the dispatch table; a call without an entry answers CKR_FUNCTION_NOT_SUPPORTED.
var handlers map[p11rpc.CallID]handler

func init() {
	handlers = map[p11rpc.CallID]handler{
		p11rpc.CallInitialize:        (*conn).cInitialize,
		p11rpc.CallFinalize:          (*conn).cFinalize,
		p11rpc.CallGetInfo:           (*conn).cGetInfo,
		p11rpc.CallGetSlotList:       (*conn).cGetSlotList,
		p11rpc.CallGetSlotInfo:       (*conn).cGetSlotInfo,
		p11rpc.CallGetTokenInfo:      (*conn).cGetTokenInfo,
		p11rpc.CallGetMechanismList:  (*conn).cGetMechanismList,
		p11rpc.CallGetMechanismInfo:  (*conn).cGetMechanismInfo,
		p11rpc.CallOpenSession:       (*conn).cOpenSession,
		p11rpc.CallCloseSession:      (*conn).cCloseSession,
		p11rpc.CallCloseAllSessions:  (*conn).cCloseAllSessions,
		p11rpc.CallGetSessionInfo:    (*conn).cGetSessionInfo,
		p11rpc.CallLogin:             (*conn).cLogin,
		p11rpc.CallLogout:            (*conn).cLogout,
		p11rpc.CallGetObjectSize:     (*conn).cGetObjectSize,
		p11rpc.CallGetAttributeValue: (*conn).cGetAttributeValue,
		p11rpc.CallFindObjectsInit:   (*conn).cFindObjectsInit,
		p11rpc.CallFindObjects:       (*conn).cFindObjects,
		p11rpc.CallFindObjectsFinal:  (*conn).cFindObjectsFinal,
		p11rpc.CallSignInit:          opInit(opSign),
		p11rpc.CallSign:              opOutput(opSign, false),
		p11rpc.CallSignUpdate:        opUpdate(opSign),
		p11rpc.CallSignFinal:         opOutput(opSign, true),
		p11rpc.CallVerifyInit:        opInit(opVerify),
		p11rpc.CallVerify:            (*conn).cVerify,
		p11rpc.CallVerifyUpdate:      opUpdate(opVerify),
		p11rpc.CallVerifyFinal:       (*conn).cVerifyFinal,
		p11rpc.CallDecryptInit:       opInit(opDecrypt),
		p11rpc.CallDecrypt:           opOutput(opDecrypt, false),
		p11rpc.CallDecryptUpdate:     opUpdateOut(opDecrypt),
		p11rpc.CallDecryptFinal:      opOutput(opDecrypt, true),
		p11rpc.CallEncryptInit:       opInit(opEncrypt),
		p11rpc.CallEncrypt:           opOutput(opEncrypt, false),
		p11rpc.CallEncryptUpdate:     opUpdateOut(opEncrypt),
		p11rpc.CallEncryptFinal:      opOutput(opEncrypt, true),
		p11rpc.CallDigestInit:        opInit(opDigest),
		p11rpc.CallDigest:            opOutput(opDigest, false),
		p11rpc.CallDigestUpdate:      opUpdate(opDigest),
		p11rpc.CallDigestFinal:       opOutput(opDigest, true),
		p11rpc.CallSeedRandom:        (*conn).cSeedRandom,
		p11rpc.CallGenerateRandom:    (*conn).cGenerateRandom,
		p11rpc.CallGenerateKeyPair:   (*conn).cGenerateKeyPair, // key management, admin clients only (admin.go)
		p11rpc.CallCreateObject:      (*conn).cCreateObject,
		p11rpc.CallDestroyObject:     (*conn).cDestroyObject,
		p11rpc.CallSetAttributeValue: (*conn).cSetAttributeValue,
	}
}

// whileDraining are the calls still served once shutdown has begun: those that only release state.
var whileDraining = map[p11rpc.CallID]bool{
	p11rpc.CallFinalize: true, p11rpc.CallCloseSession: true, p11rpc.CallCloseAllSessions: true,
	p11rpc.CallLogout: true, p11rpc.CallFindObjectsFinal: true,
}

// dispatch serves one request body and returns the call, its CK_RV and the reply body. It never panics
// and never fails: whatever the body holds, the answer is a reply (an error reply at worst).
func (c *conn) dispatch(body []byte) (call p11rpc.CallID, result rv, out []byte) {
	call = callIDOf(body)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("PKCS#11 call panicked; answered CKR_GENERAL_ERROR", "call", callName(call),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			result, out = pkcs11.CKR_GENERAL_ERROR, p11rpc.ErrorReply(pkcs11.CKR_GENERAL_ERROR)
		}
	}()
	h, rvPre := c.admit(call)
	if rvPre != ckrOK {
		return call, rvPre, p11rpc.ErrorReply(rvPre)
	}
	req, err := p11rpc.ParseRequest(body, c.version)
	if err != nil {
		c.s.m.protocolErrors.WithLabelValues("message").Inc()
		c.log.Warn("PKCS#11 call: malformed message; answered CKR_DEVICE_ERROR", "call", callName(call), "err", err)
		return call, pkcs11.CKR_DEVICE_ERROR, p11rpc.ErrorReply(pkcs11.CKR_DEVICE_ERROR)
	}
	w := p11rpc.NewReply(call, c.version)
	if err := h(c, req, w); err != nil {
		code := c.errRV(call, err)
		return call, code, p11rpc.ErrorReply(code)
	}
	out, err = w.Body()
	if err != nil {
		c.log.Error("PKCS#11 call: encoding the reply failed; answered CKR_GENERAL_ERROR", "call", callName(call), "err", err)
		return call, pkcs11.CKR_GENERAL_ERROR, p11rpc.ErrorReply(pkcs11.CKR_GENERAL_ERROR)
	}
	return call, ckrOK, out
}

// admit decides whether a call is served at all: unknown and unsupported calls, calls before
// C_Initialize and new work during shutdown are answered without reading their arguments.
func (c *conn) admit(call p11rpc.CallID) (handler, rv) {
	if _, known := p11rpc.Spec(call); !known || call == p11rpc.CallError {
		c.s.m.protocolErrors.WithLabelValues("unknown_call").Inc()
		c.log.Warn("PKCS#11 call: unknown call id; answered CKR_FUNCTION_NOT_SUPPORTED", "call_id", uint32(call))
		return nil, pkcs11.CKR_FUNCTION_NOT_SUPPORTED
	}
	h := handlers[call]
	switch {
	case h == nil:
		return nil, pkcs11.CKR_FUNCTION_NOT_SUPPORTED
	case call != p11rpc.CallInitialize && !c.initialized.Load():
		return nil, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED
	case c.s.draining.Load() && !whileDraining[call]:
		return nil, pkcs11.CKR_DEVICE_REMOVED
	}
	return h, ckrOK
}

// errRV is the CK_RV of a handler's error; argument decoding errors are logged (a conforming client
// never causes one).
func (c *conn) errRV(call p11rpc.CallID, err error) rv {
	var pe *p11rpc.ProtocolError
	if errors.As(err, &pe) {
		c.s.m.protocolErrors.WithLabelValues("arguments").Inc()
		c.log.Warn("PKCS#11 call: malformed arguments; answered CKR_DEVICE_ERROR", "call", callName(call), "err", err)
		return pkcs11.CKR_DEVICE_ERROR
	}
	return rvOf(err)
}

// callIDOf reads the call id at the start of a body (0, the error id, when there is none).
func callIDOf(body []byte) p11rpc.CallID {
	if len(body) < 4 {
		return p11rpc.CallError
	}
	return p11rpc.CallID(binary.BigEndian.Uint32(body))
}

// callName names a call for logs and metrics: "C_Sign", or "unknown".
func callName(call p11rpc.CallID) string {
	if sp, ok := p11rpc.Spec(call); ok && call != p11rpc.CallError {
		return sp.Name
	}
	return "unknown"
}
