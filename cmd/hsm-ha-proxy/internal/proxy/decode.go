package proxy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// keyKind is the family of a public key, as the algorithms need it.
type keyKind int

const (
	kindUnknown keyKind = iota
	kindRSA
	kindEC
	kindEd25519
)

func (k keyKind) String() string {
	switch k {
	case kindRSA:
		return "RSA"
	case kindEC:
		return "EC"
	case kindEd25519:
		return "Ed25519"
	}
	return "unknown"
}

func kindOf(pub crypto.PublicKey) keyKind {
	switch pub.(type) {
	case *rsa.PublicKey:
		return kindRSA
	case *ecdsa.PublicKey:
		return kindEC
	case ed25519.PublicKey:
		return kindEd25519
	}
	return kindUnknown
}

// signAlg is one sign algorithm of the API.
type signAlg struct {
	name string
	kind keyKind
	hash crypto.Hash // 0 for Ed25519 (the message is signed)
	pss  bool        // RSA-PSS with salt length = hash length
}

// opts returns the crypto.SignerOpts the library takes for this algorithm.
func (a signAlg) opts() crypto.SignerOpts {
	if a.pss {
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.hash}
	}
	return a.hash
}

var signAlgs = map[string]signAlg{
	sidecarapi.AlgRSAPKCS1SHA256: {sidecarapi.AlgRSAPKCS1SHA256, kindRSA, crypto.SHA256, false},
	sidecarapi.AlgRSAPKCS1SHA384: {sidecarapi.AlgRSAPKCS1SHA384, kindRSA, crypto.SHA384, false},
	sidecarapi.AlgRSAPKCS1SHA512: {sidecarapi.AlgRSAPKCS1SHA512, kindRSA, crypto.SHA512, false},
	sidecarapi.AlgRSAPSSSHA256:   {sidecarapi.AlgRSAPSSSHA256, kindRSA, crypto.SHA256, true},
	sidecarapi.AlgRSAPSSSHA384:   {sidecarapi.AlgRSAPSSSHA384, kindRSA, crypto.SHA384, true},
	sidecarapi.AlgRSAPSSSHA512:   {sidecarapi.AlgRSAPSSSHA512, kindRSA, crypto.SHA512, true},
	sidecarapi.AlgECDSASHA256:    {sidecarapi.AlgECDSASHA256, kindEC, crypto.SHA256, false},
	sidecarapi.AlgECDSASHA384:    {sidecarapi.AlgECDSASHA384, kindEC, crypto.SHA384, false},
	sidecarapi.AlgECDSASHA512:    {sidecarapi.AlgECDSASHA512, kindEC, crypto.SHA512, false},
	sidecarapi.AlgEd25519:        {sidecarapi.AlgEd25519, kindEd25519, 0, false},
}

// decryptAlg is one decrypt algorithm of the API.
type decryptAlg struct {
	name string
	oaep crypto.Hash // 0 for PKCS#1 v1.5
}

// opts returns the crypto.DecrypterOpts the library takes for this algorithm (OAEP: MGF1 with the same
// hash, empty label).
func (a decryptAlg) opts() crypto.DecrypterOpts {
	if a.oaep == 0 {
		return &rsa.PKCS1v15DecryptOptions{}
	}
	return &rsa.OAEPOptions{Hash: a.oaep}
}

var decryptAlgs = map[string]decryptAlg{
	sidecarapi.AlgRSAOAEPSHA1:   {sidecarapi.AlgRSAOAEPSHA1, crypto.SHA1},
	sidecarapi.AlgRSAOAEPSHA256: {sidecarapi.AlgRSAOAEPSHA256, crypto.SHA256},
	sidecarapi.AlgRSAPKCS1:      {sidecarapi.AlgRSAPKCS1, 0},
}

func names[V any](m map[string]V) string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

var (
	signAlgNames    = names(signAlgs)
	decryptAlgNames = names(decryptAlgs)
)

// signRequest is a decoded, validated sign body: the algorithm and the digest (or, for ED25519, the
// message).
type signRequest struct {
	alg   signAlg
	input []byte
}

// decryptRequest is a decoded, validated decrypt body.
type decryptRequest struct {
	alg        decryptAlg
	ciphertext []byte
}

// decodeFlatObject decodes body as one JSON object whose members are all strings and whose names are
// all in allowed, with no duplicate names and nothing after the object. Absent members are absent from
// the map.
func decodeFlatObject(body []byte, allowed ...string) (map[string]string, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	malformed := func(format string, args ...any) *apiError {
		return errorf(http.StatusBadRequest, sidecarapi.CodeMalformedJSON, format, args...)
	}
	tok, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, malformed("empty body: want a JSON object")
		}
		return nil, malformed("body is not JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, malformed("body is not a JSON object")
	}
	out := make(map[string]string, len(allowed))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, malformed("body is not JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, malformed("body is not a JSON object")
		}
		known := false
		for _, a := range allowed {
			if a == name {
				known = true
				break
			}
		}
		if !known {
			return nil, malformed("unknown field %q (allowed: %s)", truncate(name, 64), strings.Join(allowed, ", "))
		}
		if _, dup := out[name]; dup {
			return nil, malformed("duplicate field %q", name)
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, malformed("body is not JSON: %v", err)
		}
		v, ok := tok.(string)
		if !ok {
			return nil, malformed("field %q must be a string", name)
		}
		out[name] = v
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, malformed("body is not JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, malformed("unexpected data after the JSON object")
	}
	return out, nil
}

// decodeB64 decodes a standard, padded base64 field.
func decodeB64(field, s string) ([]byte, *apiError) {
	if strings.ContainsAny(s, "\r\n") { // the decoder would skip them
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "%s is not standard base64 with padding: line breaks are not allowed", field)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "%s is not standard base64 with padding: %v", field, err)
	}
	return b, nil
}

// decodeSignRequest parses and validates a sign body on its own (the key is checked by checkKey).
func decodeSignRequest(body []byte) (*signRequest, *apiError) {
	m, aerr := decodeFlatObject(body, "digest", "message", "algorithm")
	if aerr != nil {
		return nil, aerr
	}
	name, ok := m["algorithm"]
	if !ok || name == "" {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "algorithm is required (one of %s)", signAlgNames)
	}
	alg, ok := signAlgs[name]
	if !ok {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeUnknownAlgorithm, "unknown sign algorithm %q (want one of %s)", truncate(name, 64), signAlgNames)
	}
	digest, hasDigest := m["digest"]
	msg, hasMsg := m["message"]
	if alg.kind == kindEd25519 {
		if hasDigest || !hasMsg {
			return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "%s signs the message itself: send \"message\", not \"digest\"", alg.name)
		}
		in, aerr := decodeB64("message", msg)
		if aerr != nil {
			return nil, aerr
		}
		return &signRequest{alg: alg, input: in}, nil
	}
	if hasMsg || !hasDigest {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "%s signs a digest: send \"digest\" (the %v hash of the message), not \"message\"", alg.name, alg.hash)
	}
	in, aerr := decodeB64("digest", digest)
	if aerr != nil {
		return nil, aerr
	}
	if len(in) != alg.hash.Size() {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeBadDigestLength, "digest has %d bytes, %s needs %d", len(in), alg.name, alg.hash.Size())
	}
	return &signRequest{alg: alg, input: in}, nil
}

// checkKey tells whether the algorithm fits the key.
func (r *signRequest) checkKey(pub crypto.PublicKey) *apiError {
	if k := kindOf(pub); k != r.alg.kind {
		return errorf(http.StatusBadRequest, sidecarapi.CodeAlgorithmKeyMismatch, "%s needs an %s key; this key is %s", r.alg.name, r.alg.kind, k)
	}
	return nil
}

// decodeDecryptRequest parses and validates a decrypt body on its own (the key is checked by checkKey).
func decodeDecryptRequest(body []byte) (*decryptRequest, *apiError) {
	m, aerr := decodeFlatObject(body, "ciphertext", "algorithm")
	if aerr != nil {
		return nil, aerr
	}
	name, ok := m["algorithm"]
	if !ok || name == "" {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "algorithm is required (one of %s)", decryptAlgNames)
	}
	alg, ok := decryptAlgs[name]
	if !ok {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeUnknownAlgorithm, "unknown decrypt algorithm %q (want one of %s)", truncate(name, 64), decryptAlgNames)
	}
	ct, ok := m["ciphertext"]
	if !ok || ct == "" {
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "ciphertext is required")
	}
	b, aerr := decodeB64("ciphertext", ct)
	if aerr != nil {
		return nil, aerr
	}
	return &decryptRequest{alg: alg, ciphertext: b}, nil
}

// checkKey tells whether the algorithm fits the key and the ciphertext fits the modulus.
func (r *decryptRequest) checkKey(pub crypto.PublicKey) *apiError {
	rk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return errorf(http.StatusBadRequest, sidecarapi.CodeAlgorithmKeyMismatch, "%s needs an RSA key; this key is %s", r.alg.name, kindOf(pub))
	}
	if len(r.ciphertext) != rk.Size() {
		return errorf(http.StatusBadRequest, sidecarapi.CodeBadCiphertextLength, "ciphertext has %d bytes, this key needs %d", len(r.ciphertext), rk.Size())
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// errorf builds an *apiError.
func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}
