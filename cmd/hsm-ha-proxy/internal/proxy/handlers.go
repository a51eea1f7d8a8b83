package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// routes builds the router. Every path answers wrong methods with 405 and unknown paths with 404, both
// in the API's error shape.
func (s *Server) routes(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	type route struct {
		method, path string
		h            http.Handler
	}
	const (
		keysPath    = "/v1/partitions/{p}/keys"
		keyPath     = "/v1/partitions/{p}/keys/{label}"
		secretsPath = "/v1/partitions/{p}/secret-keys"
		secretPath  = "/v1/partitions/{p}/secret-keys/{label}"
	)
	for _, rt := range []route{
		{http.MethodGet, keysPath, s.api("list_keys", true, s.listKeys)},
		{http.MethodGet, keyPath, s.api("get_key", true, s.getKey)},
		{http.MethodPost, keyPath + "/sign", s.api("sign", true, s.sign)},
		{http.MethodPost, keyPath + "/decrypt", s.api("decrypt", true, s.decrypt)},
		{http.MethodGet, secretsPath, s.api("list_secret_keys", true, s.listSecretKeys)},
		{http.MethodGet, secretPath, s.api("get_secret_key", true, s.getSecretKey)},
		{http.MethodPost, secretPath + "/encrypt", s.api("encrypt", true, s.encrypt)},
		{http.MethodPost, secretPath + "/decrypt", s.api("decrypt_secret", true, s.decryptSecret)},
		{http.MethodPost, secretPath + "/mac", s.api("mac", true, s.mac)},
		{http.MethodPost, secretPath + "/verify-mac", s.api("verify_mac", true, s.verifyMAC)},
		{http.MethodGet, "/v1/status", s.api("status", false, s.status)},
		{http.MethodGet, "/healthz", http.HandlerFunc(s.healthz)},
		{http.MethodGet, "/readyz", http.HandlerFunc(s.readyz)},
		{http.MethodGet, "/metrics", metrics},
	} {
		mux.Handle(rt.method+" "+rt.path, rt.h)
		allow := rt.method
		if rt.method == http.MethodGet {
			allow = "GET, HEAD"
		}
		mux.HandleFunc(rt.path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			s.fail(w, r, errorf(http.StatusMethodNotAllowed, sidecarapi.CodeMethodNotAllowed, "%s is not allowed here (allowed: %s)", methodLabel(r.Method), allow))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, errorf(http.StatusNotFound, sidecarapi.CodeNotFound, "no such endpoint"))
	})
	return s.observe(mux)
}

// apiFunc serves one API request under the request deadline ctx; an error becomes an error answer.
type apiFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error

// api wraps an API endpoint: the request deadline, authentication (401) and, for partitioned endpoints,
// the partition checks (404 unknown, 403 not granted).
func (s *Server) api(op string, partitioned bool, h apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri := reqInfoFrom(r.Context())
		ri.op = op
		ctx, cancel := context.WithTimeout(r.Context(), s.reqTimeout)
		defer cancel()
		id, err := identityOf(r.Context(), r.TLS)
		if err != nil {
			s.fail(w, r, errorf(http.StatusUnauthorized, sidecarapi.CodeUnauthenticated, "cannot identify the caller: %v", err))
			return
		}
		ri.peer = id.String()
		p := s.auth.Load().lookup(id)
		if p == nil {
			s.fail(w, r, errorf(http.StatusUnauthorized, sidecarapi.CodeUnauthenticated, "%s is not a configured client", id))
			return
		}
		ri.client = p.name
		if partitioned {
			part := r.PathValue("p")
			ri.partition, ri.key = part, r.PathValue("label")
			if !s.partitions[part] {
				s.fail(w, r, errorf(http.StatusNotFound, sidecarapi.CodeUnknownPartition, "unknown partition %q", truncate(part, 64)))
				return
			}
			if !p.parts[part] {
				s.fail(w, r, errorf(http.StatusForbidden, sidecarapi.CodeForbidden, "client %q may not use partition %q", p.name, part))
				return
			}
		}
		if err := h(ctx, w, r, ri); err != nil {
			s.fail(w, r, s.classify(ctx, err))
		}
	})
}

// classify is the package classify, plus: requests cancelled because the grace period ran out are 503.
// The result is an *apiError, or one carrying the cause of a 5xx for the log.
func (s *Server) classify(ctx context.Context, err error) error {
	if s.forced.Load() && errors.Is(ctx.Err(), context.Canceled) {
		return errorf(http.StatusServiceUnavailable, sidecarapi.CodeShuttingDown, "the sidecar is shutting down")
	}
	return withCause(classify(ctx, err), err)
}

// causeError carries the error behind a 5xx answer, for the log only (a 500 tells the client nothing more
// than "internal error").
type causeError struct {
	*apiError
	cause error
}

// Unwrap returns the answer.
func (c *causeError) Unwrap() error { return c.apiError }

func withCause(ae *apiError, cause error) error {
	if cause == nil || ae.status < 500 {
		return ae
	}
	return &causeError{apiError: ae, cause: cause}
}

// fail writes an error answer and records it for the access log.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	ri := reqInfoFrom(r.Context())
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, code: sidecarapi.CodeInternal, msg: "internal error"}
	}
	ri.code = ae.code
	if ae.status >= 500 {
		var ce *causeError
		if errors.As(err, &ce) {
			ri.errMsg = ce.cause.Error()
		} else {
			ri.errMsg = ae.msg
		}
	}
	if ae.status == statusClientClosed {
		return // nobody is listening
	}
	writeJSON(w, ae.status, sidecarapi.ErrorBody{Error: sidecarapi.ErrorDetail{Code: ae.code, Message: ae.msg}})
}

// readBody reads a request body of at most MaxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > MaxBodyBytes {
		return nil, errorf(http.StatusRequestEntityTooLarge, sidecarapi.CodeBodyTooLarge, "the body has %d bytes; the limit is %d", r.ContentLength, MaxBodyBytes)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, sidecarapi.CodeBodyTooLarge, "the body is over the limit of %d bytes", MaxBodyBytes)
		}
		return nil, errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "reading the body: %v", err)
	}
	return b, nil
}

func (s *Server) listKeys(_ context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	infos, err := s.be.Keys(ri.partition)
	if err != nil {
		return err
	}
	out := sidecarapi.KeyList{Keys: make([]sidecarapi.KeyInfo, 0, len(infos))}
	for _, ki := range infos {
		kj, err := toKeyInfo(ki)
		if err != nil {
			return err
		}
		out.Keys = append(out.Keys, kj)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getKey(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, err := s.be.Key(ctx, ri.partition, ri.key)
	if err != nil {
		return err
	}
	kj, err := toKeyInfo(k.Info())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, kj)
	return nil
}

// keyAndBody is the common start of sign and decrypt: the key (404 before the body is read) and the body.
func (s *Server) keyAndBody(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) (keyHandle, []byte, error) {
	k, err := s.be.Key(ctx, ri.partition, ri.key)
	if err != nil {
		return nil, nil, err
	}
	body, err := readBody(w, r)
	return k, body, err
}

// served records the device that served (or last failed) the operation for the access log.
func (ri *reqInfo) served(dev string) {
	if dev != "" {
		ri.device = dev
	}
}

func (s *Server) sign(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, body, err := s.keyAndBody(ctx, w, r, ri)
	if err != nil {
		return err
	}
	req, aerr := decodeSignRequest(body)
	if aerr != nil {
		return aerr
	}
	ri.alg = req.alg.name
	if aerr := req.checkKey(k.Public()); aerr != nil {
		return aerr
	}
	sig, dev, err := k.SignDevice(ctx, req.input, req.alg.opts())
	ri.served(dev)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sidecarapi.SignResponse{Signature: base64.StdEncoding.EncodeToString(sig), Device: dev})
	return nil
}

func (s *Server) decrypt(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
	k, body, err := s.keyAndBody(ctx, w, r, ri)
	if err != nil {
		return err
	}
	req, aerr := decodeDecryptRequest(body)
	if aerr != nil {
		return aerr
	}
	ri.alg = req.alg.name
	if aerr := req.checkKey(k.Public()); aerr != nil {
		return aerr
	}
	pt, dev, err := k.DecryptDevice(ctx, req.ciphertext, req.alg.opts())
	ri.served(dev)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sidecarapi.DecryptResponse{Plaintext: base64.StdEncoding.EncodeToString(pt)})
	return nil
}

func (s *Server) status(_ context.Context, w http.ResponseWriter, _ *http.Request, _ *reqInfo) error {
	writeJSON(w, http.StatusOK, sidecarapi.Status{Ready: s.be.Ready(), Devices: toDeviceStatuses(s.be.Status())})
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.draining.Load():
		s.fail(w, r, errorf(http.StatusServiceUnavailable, sidecarapi.CodeShuttingDown, "the sidecar is shutting down"))
	case !s.be.Ready():
		s.fail(w, r, errorf(http.StatusServiceUnavailable, sidecarapi.CodeNotReady, "some partition has no up device holding all its keys"))
	default:
		writeJSON(w, http.StatusOK, map[string]bool{"ready": true})
	}
}
