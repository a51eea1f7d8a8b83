package proxy

import (
	"context"
	"crypto"
	"encoding/base64"
	"net/http"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/servedkey"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// The secret-key endpoints (docs/encryption.md): AES-GCM encrypt and decrypt, HMAC mac and verify-mac,
// under the same per-client partition grants as the key pairs.

// secretHandle is what the server needs of a *pkcs11ha.SecretKey (servedkey.Secret).
type secretHandle interface {
	Info() pkcs11ha.SecretKeyInfo
	SealDevice(ctx context.Context, plaintext, aad []byte) ([]byte, string, error)
	OpenDevice(ctx context.Context, sealed, aad []byte) ([]byte, string, error)
	MACDevice(ctx context.Context, h crypto.Hash, data []byte) ([]byte, string, error)
	VerifyMACDevice(ctx context.Context, h crypto.Hash, data, mac []byte) (string, error)
}

func (b clusterBackend) SecretKey(ctx context.Context, partition, label string) (secretHandle, error) {
	k, err := b.cl.SecretKey(ctx, partition, label)
	if err != nil {
		return nil, err
	}
	return servedkey.Secret{SecretKey: k}, nil
}

func (b clusterBackend) SecretKeys(partition string) ([]pkcs11ha.SecretKeyInfo, error) {
	return b.cl.SecretKeys(partition)
}

var macAlgs = map[string]crypto.Hash{
	sidecarapi.AlgHMACSHA256: crypto.SHA256,
	sidecarapi.AlgHMACSHA384: crypto.SHA384,
	sidecarapi.AlgHMACSHA512: crypto.SHA512,
}

var macAlgNames = names(macAlgs)

func toSecretKeyInfo(si pkcs11ha.SecretKeyInfo) sidecarapi.SecretKeyInfo {
	devs := si.Devices
	if devs == nil {
		devs = []string{}
	}
	return sidecarapi.SecretKeyInfo{Label: si.Label, ID: si.ID, Algorithm: si.Algorithm, CheckValue: si.CheckValue, Devices: devs}
}

func (s *Server) listSecretKeys(_ context.Context, w http.ResponseWriter, _ *http.Request, ri *reqInfo) error {
	infos, err := s.be.SecretKeys(ri.partition)
	if err != nil {
		return err
	}
	out := sidecarapi.SecretKeyList{Keys: make([]sidecarapi.SecretKeyInfo, 0, len(infos))}
	for _, si := range infos {
		out.Keys = append(out.Keys, toSecretKeyInfo(si))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getSecretKey(ctx context.Context, w http.ResponseWriter, _ *http.Request, ri *reqInfo) error {
	k, err := s.be.SecretKey(ctx, ri.partition, ri.key)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toSecretKeyInfo(k.Info()))
	return nil
}

// secretRequest is the common start of the secret-key operations: the key (404 before the body is read)
// and the body's fields, decoded from base64 where b64 says so; required fields must be present.
func (s *Server) secretRequest(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo,
	required []string, optional ...string) (secretHandle, map[string][]byte, string, error) {
	k, err := s.be.SecretKey(ctx, ri.partition, ri.key)
	if err != nil {
		return nil, nil, "", err
	}
	body, err := readBody(w, r)
	if err != nil {
		return nil, nil, "", err
	}
	m, aerr := decodeFlatObject(body, append(append([]string{}, required...), optional...)...)
	if aerr != nil {
		return nil, nil, "", aerr
	}
	out := map[string][]byte{}
	for _, f := range append(append([]string{}, required...), optional...) {
		v, ok := m[f]
		if f == "algorithm" {
			continue
		}
		if !ok {
			for _, req := range required {
				if req == f {
					return nil, nil, "", errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "%s is required", f)
				}
			}
			continue
		}
		b, aerr := decodeB64(f, v)
		if aerr != nil {
			return nil, nil, "", aerr
		}
		out[f] = b
	}
	return k, out, m["algorithm"], nil
}

func (s *Server) encrypt(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, f, _, err := s.secretRequest(ctx, w, r, ri, []string{"plaintext"}, "aad")
	if err != nil {
		return err
	}
	ri.alg = "AES_GCM"
	ct, dev, err := k.SealDevice(ctx, f["plaintext"], f["aad"])
	ri.served(dev)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sidecarapi.EncryptResponse{Ciphertext: base64.StdEncoding.EncodeToString(ct), Device: dev})
	return nil
}

func (s *Server) decryptSecret(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, f, _, err := s.secretRequest(ctx, w, r, ri, []string{"ciphertext"}, "aad")
	if err != nil {
		return err
	}
	ri.alg = "AES_GCM"
	pt, dev, err := k.OpenDevice(ctx, f["ciphertext"], f["aad"])
	ri.served(dev)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sidecarapi.SecretDecryptResponse{Plaintext: base64.StdEncoding.EncodeToString(pt), Device: dev})
	return nil
}

// macHash is the request's algorithm as a hash (0: the key's own).
func macHash(ri *reqInfo, name string) (crypto.Hash, error) {
	if name == "" {
		return 0, nil
	}
	h, ok := macAlgs[name]
	if !ok {
		return 0, errorf(http.StatusBadRequest, sidecarapi.CodeUnknownAlgorithm, "unknown MAC algorithm %q (want one of %s)", truncate(name, 64), macAlgNames)
	}
	ri.alg = name
	return h, nil
}

func (s *Server) mac(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, f, alg, err := s.secretRequest(ctx, w, r, ri, []string{"data"}, "algorithm")
	if err != nil {
		return err
	}
	h, err := macHash(ri, alg)
	if err != nil {
		return err
	}
	mac, dev, err := k.MACDevice(ctx, h, f["data"])
	ri.served(dev)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sidecarapi.MACResponse{MAC: base64.StdEncoding.EncodeToString(mac), Device: dev})
	return nil
}

func (s *Server) verifyMAC(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, f, alg, err := s.secretRequest(ctx, w, r, ri, []string{"data", "mac"}, "algorithm")
	if err != nil {
		return err
	}
	h, err := macHash(ri, alg)
	if err != nil {
		return err
	}
	dev, err := k.VerifyMACDevice(ctx, h, f["data"], f["mac"])
	ri.served(dev)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sidecarapi.VerifyMACResponse{Valid: true, Device: dev})
	return nil
}
