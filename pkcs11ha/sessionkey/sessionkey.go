// Package sessionkey applies crypto/rsa's PKCS#1 v1.5 session-key rule to a decryption result: with
// rsa.PKCS1v15DecryptOptions.SessionKeyLen set, a refused decryption (or a plaintext of the wrong length)
// yields random bytes of that length instead of an error, so a padding check leaks nothing. The library
// (pkcs11ha.Key) and the pure-Go sidecar client both implement crypto.Decrypter with it; this package has
// no cgo so the client stays free of it.
package sessionkey

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
)

// Apply returns (pt, err) unchanged unless opts asks for a session key and the decryption was refused or
// has the wrong length; then it returns SessionKeyLen random bytes from rnd (crypto/rand when nil).
func Apply(rnd io.Reader, opts crypto.DecrypterOpts, pt []byte, err error) ([]byte, error) {
	o, ok := opts.(*rsa.PKCS1v15DecryptOptions)
	if !ok || o.SessionKeyLen <= 0 || !(errors.Is(err, rsa.ErrDecryption) || (err == nil && len(pt) != o.SessionKeyLen)) {
		return pt, err
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	key := make([]byte, o.SessionKeyLen)
	if _, rerr := io.ReadFull(rnd, key); rerr != nil {
		return nil, rerr
	}
	return key, nil
}
