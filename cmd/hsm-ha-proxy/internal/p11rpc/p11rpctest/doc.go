// Package p11rpctest is the client side of p11-kit's RPC protocol, for tests of the PKCS#11 front end
// without p11-kit-client.so: Call builds a request body as p11-kit's client writes it (the version 0
// encodings, or those of p11-kit 0.25.6+ on a version 2 connection), DecodeReply reads a reply, and Client
// runs calls over a connection. Its encoders are written apart from package p11rpc's decoders, so that each
// checks the other. Test code only: the deployed binary must not import it.
package p11rpctest
