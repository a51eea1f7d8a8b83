package p11front

import (
	"io"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// oversizeHead is how much of an over-long message's body is kept to answer it: the call id, the request
// signature and the session handle.
const oversizeHead = 64

// oversizeEnds are the calls that carry data, with the CK_RV a token gives for data it cannot take and the
// operation such a failure ends (PKCS#11: an error other than CKR_BUFFER_TOO_SMALL ends the operation).
var oversizeEnds = map[p11rpc.CallID]struct {
	rv   rv
	kind opKind
}{
	p11rpc.CallSign:          {pkcs11.CKR_DATA_LEN_RANGE, opSign},
	p11rpc.CallSignUpdate:    {pkcs11.CKR_DATA_LEN_RANGE, opSign},
	p11rpc.CallVerify:        {pkcs11.CKR_DATA_LEN_RANGE, opVerify},
	p11rpc.CallVerifyUpdate:  {pkcs11.CKR_DATA_LEN_RANGE, opVerify},
	p11rpc.CallVerifyFinal:   {pkcs11.CKR_SIGNATURE_LEN_RANGE, opVerify},
	p11rpc.CallDecrypt:       {pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, opDecrypt},
	p11rpc.CallDecryptUpdate: {pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, opDecrypt},
	p11rpc.CallEncrypt:       {pkcs11.CKR_DATA_LEN_RANGE, opEncrypt},
	p11rpc.CallEncryptUpdate: {pkcs11.CKR_DATA_LEN_RANGE, opEncrypt},
	p11rpc.CallDigest:        {pkcs11.CKR_DATA_LEN_RANGE, opDigest},
	p11rpc.CallDigestUpdate:  {pkcs11.CKR_DATA_LEN_RANGE, opDigest},
}

// oversize answers a message over the size limit without reading it into memory: it is skipped, and its
// call answered with a PKCS#11 error, so that the application keeps its connection (p11-kit-client never
// reconnects). A call that carries data gets the CK_RV of data too long for the token (C_Sign with a
// single-part input past the limit: CKR_DATA_LEN_RANGE) and its session's operation ends; any other gets
// CKR_ARGUMENTS_BAD (before C_Initialize: CKR_CRYPTOKI_NOT_INITIALIZED). An error is returned only when
// the stream ends inside the message or the answer cannot be written.
func (c *conn) oversize(r io.Reader, e *p11rpc.FrameTooLargeError) error {
	head, err := p11rpc.SkipFrame(r, e, oversizeHead)
	if err != nil {
		return err
	}
	call, handle, hasSession := p11rpc.ParseRequestHead(head)
	code := rv(pkcs11.CKR_ARGUMENTS_BAD)
	if !c.initialized.Load() {
		code = pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED
	} else if oe, ok := oversizeEnds[call]; ok {
		code = oe.rv
		if s, err := c.sess.get(handle); hasSession && err == nil {
			s.mu.Lock()
			s.ops.Active[oe.kind] = nil
			s.mu.Unlock()
		}
	}
	c.s.m.protocolErrors.WithLabelValues("oversize").Inc()
	c.s.m.call(c.clientName(), call, code)
	c.log.Warn("PKCS#11 call: message over the size limit: skipped and answered "+rvName(code),
		"call", callName(call), "bytes", e.Len(), "limit", e.Max)
	c.wmu.Lock()
	err = p11rpc.WriteFrame(c.nc, p11rpc.Frame{Code: e.Code, Body: p11rpc.ErrorReply(code)})
	c.wmu.Unlock()
	return err
}
