package p11rpc

import "fmt"

// ProtocolError is a message or frame that does not follow the protocol: a bad header, an unknown call id, a
// signature that is not the table's, a short body, a reader called out of signature order, bytes left over.
// The server answers it with an error reply (or closes the connection); it is never a PKCS#11 result.
type ProtocolError struct {
	Call   CallID // the call being decoded, CallError when not known yet
	Offset int    // byte offset in the body (or frame header) where decoding stopped
	Msg    string
}

func (e *ProtocolError) Error() string {
	if e.Call != CallError {
		return fmt.Sprintf("p11rpc: %s: at byte %d: %s", e.Call, e.Offset, e.Msg)
	}
	return fmt.Sprintf("p11rpc: at byte %d: %s", e.Offset, e.Msg)
}
