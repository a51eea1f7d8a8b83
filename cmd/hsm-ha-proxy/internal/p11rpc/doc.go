// Package p11rpc is the wire codec of p11-kit's RPC protocol, the protocol the stock p11-kit-client.so
// speaks to a `p11-kit server`: the handshake byte, frames, the call table, request decoding and reply
// encoding. It is pure Go and knows nothing of sessions, tokens or the HA cluster; the PKCS#11 front end
// (package p11front) builds the server on it. See docs/ARCHITECTURE.md, "PKCS#11 front end".
//
// Work in progress: the API is fixed, the bodies are being filled in.
package p11rpc
