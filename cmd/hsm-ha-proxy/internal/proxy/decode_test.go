package proxy

import (
	"crypto"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

func b64(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }

func TestDecodeSignRequest(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantCode string // "" means valid
		wantAlg  string
		wantLen  int
	}{
		{"ecdsa sha256", `{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"}`, "", sidecarapi.AlgECDSASHA256, 32},
		{"ecdsa sha384", `{"algorithm":"ECDSA_SHA384","digest":"` + b64(48) + `"}`, "", sidecarapi.AlgECDSASHA384, 48},
		{"ecdsa sha512", `{"digest":"` + b64(64) + `","algorithm":"ECDSA_SHA512"}`, "", sidecarapi.AlgECDSASHA512, 64},
		{"rsa pkcs1 sha256", `{"digest":"` + b64(32) + `","algorithm":"RSA_PKCS1_SHA256"}`, "", sidecarapi.AlgRSAPKCS1SHA256, 32},
		{"rsa pkcs1 sha384", `{"digest":"` + b64(48) + `","algorithm":"RSA_PKCS1_SHA384"}`, "", sidecarapi.AlgRSAPKCS1SHA384, 48},
		{"rsa pkcs1 sha512", `{"digest":"` + b64(64) + `","algorithm":"RSA_PKCS1_SHA512"}`, "", sidecarapi.AlgRSAPKCS1SHA512, 64},
		{"rsa pss sha256", `{"digest":"` + b64(32) + `","algorithm":"RSA_PSS_SHA256"}`, "", sidecarapi.AlgRSAPSSSHA256, 32},
		{"rsa pss sha384", `{"digest":"` + b64(48) + `","algorithm":"RSA_PSS_SHA384"}`, "", sidecarapi.AlgRSAPSSSHA384, 48},
		{"rsa pss sha512", `{"digest":"` + b64(64) + `","algorithm":"RSA_PSS_SHA512"}`, "", sidecarapi.AlgRSAPSSSHA512, 64},
		{"ed25519 message", `{"message":"aGVsbG8=","algorithm":"ED25519"}`, "", sidecarapi.AlgEd25519, 5},
		{"ed25519 empty message", `{"message":"","algorithm":"ED25519"}`, "", sidecarapi.AlgEd25519, 0},
		{"whitespace around", " \n{ \"digest\" : \"" + b64(32) + "\" , \"algorithm\":\"ECDSA_SHA256\" }\n ", "", sidecarapi.AlgECDSASHA256, 32},

		{"empty body", ``, sidecarapi.CodeMalformedJSON, "", 0},
		{"not json", `digest=abc`, sidecarapi.CodeMalformedJSON, "", 0},
		{"array", `["ECDSA_SHA256"]`, sidecarapi.CodeMalformedJSON, "", 0},
		{"string", `"x"`, sidecarapi.CodeMalformedJSON, "", 0},
		{"null", `null`, sidecarapi.CodeMalformedJSON, "", 0},
		{"truncated", `{"digest":"` + b64(32), sidecarapi.CodeMalformedJSON, "", 0},
		{"unclosed", `{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"`, sidecarapi.CodeMalformedJSON, "", 0},
		{"trailing object", `{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"}{}`, sidecarapi.CodeMalformedJSON, "", 0},
		{"trailing garbage", `{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"} x`, sidecarapi.CodeMalformedJSON, "", 0},
		{"unknown field", `{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256","salt":"1"}`, sidecarapi.CodeMalformedJSON, "", 0},
		{"duplicate field", `{"digest":"` + b64(32) + `","digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeMalformedJSON, "", 0},
		{"digest not a string", `{"digest":[1,2],"algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeMalformedJSON, "", 0},
		{"digest null", `{"digest":null,"algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeMalformedJSON, "", 0},
		{"algorithm number", `{"digest":"` + b64(32) + `","algorithm":7}`, sidecarapi.CodeMalformedJSON, "", 0},

		{"no algorithm", `{"digest":"` + b64(32) + `"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"empty algorithm", `{"digest":"` + b64(32) + `","algorithm":""}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"unknown algorithm", `{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA1"}`, sidecarapi.CodeUnknownAlgorithm, "", 0},
		{"lower-case algorithm", `{"digest":"` + b64(32) + `","algorithm":"ecdsa_sha256"}`, sidecarapi.CodeUnknownAlgorithm, "", 0},
		{"decrypt algorithm for sign", `{"digest":"` + b64(32) + `","algorithm":"RSA_OAEP_SHA256"}`, sidecarapi.CodeUnknownAlgorithm, "", 0},
		{"no digest", `{"algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"message for ecdsa", `{"message":"aGVsbG8=","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"digest and message", `{"digest":"` + b64(32) + `","message":"aGVsbG8=","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"digest for ed25519", `{"digest":"` + b64(32) + `","algorithm":"ED25519"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"no message for ed25519", `{"algorithm":"ED25519"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"base64 url alphabet", `{"digest":"` + strings.Repeat("_-", 21) + `AA==","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"base64 unpadded", `{"digest":"` + strings.TrimRight(b64(32), "=") + `","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"base64 with newline", `{"digest":"` + b64(30) + `\nAAA=","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"base64 non-zero padding bits", `{"message":"aGVsbG9=","algorithm":"ED25519"}`, sidecarapi.CodeInvalidRequest, "", 0},
		{"digest too short", `{"digest":"` + b64(31) + `","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeBadDigestLength, "", 0},
		{"digest too long", `{"digest":"` + b64(33) + `","algorithm":"RSA_PSS_SHA256"}`, sidecarapi.CodeBadDigestLength, "", 0},
		{"sha256 digest for sha384", `{"digest":"` + b64(32) + `","algorithm":"RSA_PKCS1_SHA384"}`, sidecarapi.CodeBadDigestLength, "", 0},
		{"empty digest", `{"digest":"","algorithm":"ECDSA_SHA256"}`, sidecarapi.CodeBadDigestLength, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, aerr := decodeSignRequest([]byte(tt.body))
			if tt.wantCode != "" {
				require.NotNil(t, aerr, "want %s", tt.wantCode)
				assert.Equal(t, tt.wantCode, aerr.code, aerr.msg)
				assert.Equal(t, http.StatusBadRequest, aerr.status)
				assert.NotEmpty(t, aerr.msg)
				return
			}
			require.Nil(t, aerr)
			assert.Equal(t, tt.wantAlg, req.alg.name)
			assert.Len(t, req.input, tt.wantLen)
		})
	}
}

func TestSignAlgorithmOptions(t *testing.T) {
	tests := []struct {
		alg  string
		want crypto.SignerOpts
		kind keyKind
	}{
		{sidecarapi.AlgRSAPKCS1SHA256, crypto.SHA256, kindRSA},
		{sidecarapi.AlgRSAPKCS1SHA384, crypto.SHA384, kindRSA},
		{sidecarapi.AlgRSAPKCS1SHA512, crypto.SHA512, kindRSA},
		{sidecarapi.AlgRSAPSSSHA256, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, kindRSA},
		{sidecarapi.AlgRSAPSSSHA384, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA384}, kindRSA},
		{sidecarapi.AlgRSAPSSSHA512, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512}, kindRSA},
		{sidecarapi.AlgECDSASHA256, crypto.SHA256, kindEC},
		{sidecarapi.AlgECDSASHA384, crypto.SHA384, kindEC},
		{sidecarapi.AlgECDSASHA512, crypto.SHA512, kindEC},
		{sidecarapi.AlgEd25519, crypto.Hash(0), kindEd25519},
	}
	require.Len(t, signAlgs, len(tests), "every algorithm is listed here")
	for _, tt := range tests {
		t.Run(tt.alg, func(t *testing.T) {
			a, ok := signAlgs[tt.alg]
			require.True(t, ok)
			assert.Equal(t, tt.want, a.opts())
			assert.Equal(t, tt.kind, a.kind)
		})
	}
}

func TestDecodeDecryptRequest(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantCode string
		wantAlg  string
		wantOpts crypto.DecrypterOpts
	}{
		{"oaep sha1", `{"ciphertext":"` + b64(256) + `","algorithm":"RSA_OAEP_SHA1"}`, "", sidecarapi.AlgRSAOAEPSHA1, &rsa.OAEPOptions{Hash: crypto.SHA1}},
		{"oaep sha256", `{"ciphertext":"` + b64(256) + `","algorithm":"RSA_OAEP_SHA256"}`, "", sidecarapi.AlgRSAOAEPSHA256, &rsa.OAEPOptions{Hash: crypto.SHA256}},
		{"pkcs1", `{"algorithm":"RSA_PKCS1","ciphertext":"` + b64(256) + `"}`, "", sidecarapi.AlgRSAPKCS1, &rsa.PKCS1v15DecryptOptions{}},

		{"malformed", `{"ciphertext":`, sidecarapi.CodeMalformedJSON, "", nil},
		{"unknown field", `{"ciphertext":"` + b64(256) + `","algorithm":"RSA_PKCS1","label":""}`, sidecarapi.CodeMalformedJSON, "", nil},
		{"digest field", `{"digest":"` + b64(32) + `","algorithm":"RSA_PKCS1"}`, sidecarapi.CodeMalformedJSON, "", nil},
		{"no algorithm", `{"ciphertext":"` + b64(256) + `"}`, sidecarapi.CodeInvalidRequest, "", nil},
		{"sign algorithm", `{"ciphertext":"` + b64(256) + `","algorithm":"RSA_PKCS1_SHA256"}`, sidecarapi.CodeUnknownAlgorithm, "", nil},
		{"oaep sha512", `{"ciphertext":"` + b64(256) + `","algorithm":"RSA_OAEP_SHA512"}`, sidecarapi.CodeUnknownAlgorithm, "", nil},
		{"no ciphertext", `{"algorithm":"RSA_PKCS1"}`, sidecarapi.CodeInvalidRequest, "", nil},
		{"empty ciphertext", `{"ciphertext":"","algorithm":"RSA_PKCS1"}`, sidecarapi.CodeInvalidRequest, "", nil},
		{"bad base64", `{"ciphertext":"***","algorithm":"RSA_PKCS1"}`, sidecarapi.CodeInvalidRequest, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, aerr := decodeDecryptRequest([]byte(tt.body))
			if tt.wantCode != "" {
				require.NotNil(t, aerr)
				assert.Equal(t, tt.wantCode, aerr.code, aerr.msg)
				return
			}
			require.Nil(t, aerr)
			assert.Equal(t, tt.wantAlg, req.alg.name)
			assert.Equal(t, tt.wantOpts, req.alg.opts())
			assert.Len(t, req.ciphertext, 256)
		})
	}
}

func TestCheckKey(t *testing.T) {
	k := testKeys(t)
	tests := []struct {
		alg      string
		pub      crypto.PublicKey
		wantCode string
	}{
		{sidecarapi.AlgECDSASHA256, k.EC.Public(), ""},
		{sidecarapi.AlgECDSASHA512, k.EC.Public(), ""},
		{sidecarapi.AlgECDSASHA256, k.RSA.Public(), sidecarapi.CodeAlgorithmKeyMismatch},
		{sidecarapi.AlgRSAPSSSHA256, k.RSA.Public(), ""},
		{sidecarapi.AlgRSAPSSSHA256, k.EC.Public(), sidecarapi.CodeAlgorithmKeyMismatch},
		{sidecarapi.AlgRSAPKCS1SHA256, k.Ed.Public(), sidecarapi.CodeAlgorithmKeyMismatch},
		{sidecarapi.AlgEd25519, k.Ed.Public(), ""},
		{sidecarapi.AlgEd25519, k.EC.Public(), sidecarapi.CodeAlgorithmKeyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.alg+"/"+kindOf(tt.pub).String(), func(t *testing.T) {
			r := &signRequest{alg: signAlgs[tt.alg]}
			aerr := r.checkKey(tt.pub)
			if tt.wantCode == "" {
				assert.Nil(t, aerr)
				return
			}
			require.NotNil(t, aerr)
			assert.Equal(t, tt.wantCode, aerr.code)
		})
	}
	d := &decryptRequest{alg: decryptAlgs[sidecarapi.AlgRSAPKCS1], ciphertext: make([]byte, 256)}
	assert.Nil(t, d.checkKey(k.RSA.Public()))
	assert.Equal(t, sidecarapi.CodeAlgorithmKeyMismatch, d.checkKey(k.EC.Public()).code)
	d.ciphertext = d.ciphertext[:255]
	assert.Equal(t, sidecarapi.CodeBadCiphertextLength, d.checkKey(k.RSA.Public()).code)
}

// FuzzDecodeSignRequest checks that decoding never panics, that every body is either accepted with a
// consistent request or refused with a 400 of the API, and that accepted requests survive a round trip.
func FuzzDecodeSignRequest(f *testing.F) {
	for _, s := range []string{
		`{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"}`,
		`{"digest":"` + b64(64) + `","algorithm":"RSA_PSS_SHA512"}`,
		`{"message":"aGVsbG8=","algorithm":"ED25519"}`,
		`{"digest":"","algorithm":""}`,
		`{"digest":"` + b64(32) + `","algorithm":"ECDSA_SHA256"}{}`,
		`{"a":{"b":[1,2,{"c":null}]}}`,
		`{"digest":"\u0041\u0041==","algorithm":"ECDSA_SHA256"}`,
		`[`, `{`, `}`, `""`, `null`, "\x00", "{\"digest\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, aerr := decodeSignRequest(body)
		if aerr != nil {
			require.Nil(t, req)
			require.Equal(t, http.StatusBadRequest, aerr.status)
			require.Contains(t, []string{sidecarapi.CodeMalformedJSON, sidecarapi.CodeInvalidRequest, sidecarapi.CodeUnknownAlgorithm, sidecarapi.CodeBadDigestLength}, aerr.code)
			require.NotEmpty(t, aerr.msg)
			return
		}
		alg, ok := signAlgs[req.alg.name]
		require.True(t, ok)
		require.Equal(t, alg, req.alg)
		field := "digest"
		if alg.kind == kindEd25519 {
			field = "message"
		} else {
			require.Len(t, req.input, alg.hash.Size())
		}
		again, err := json.Marshal(map[string]string{field: base64.StdEncoding.EncodeToString(req.input), "algorithm": alg.name})
		require.NoError(t, err)
		req2, aerr := decodeSignRequest(again)
		require.Nil(t, aerr)
		require.Equal(t, req, req2)
	})
}

// FuzzDecodeDecryptRequest is FuzzDecodeSignRequest for decrypt bodies.
func FuzzDecodeDecryptRequest(f *testing.F) {
	for _, s := range []string{
		`{"ciphertext":"` + b64(256) + `","algorithm":"RSA_OAEP_SHA256"}`,
		`{"ciphertext":"AA==","algorithm":"RSA_PKCS1"}`,
		`{"ciphertext":"","algorithm":"RSA_OAEP_SHA1"}`,
		`{}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, aerr := decodeDecryptRequest(body)
		if aerr != nil {
			require.Nil(t, req)
			require.Equal(t, http.StatusBadRequest, aerr.status)
			require.Contains(t, []string{sidecarapi.CodeMalformedJSON, sidecarapi.CodeInvalidRequest, sidecarapi.CodeUnknownAlgorithm}, aerr.code)
			return
		}
		require.NotEmpty(t, req.ciphertext)
		_, ok := decryptAlgs[req.alg.name]
		require.True(t, ok)
	})
}
