package proxy

import (
	"context"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// Key management over the HTTP API, for clients granted admin: true (sidecarapi/admin.go lists the
// endpoints; docs/keys.md says what each does).

// adminRequestTimeout bounds an admin request: a creation reaches every device (one slow RSA-4096
// generation, then the copies), then settles a race with a concurrent creation.
const adminRequestTimeout = 2 * time.Minute

// adminRoute is one endpoint of the router.
type adminRoute struct {
	method, path string
	h            http.Handler
}

// keyAdmin is what the admin endpoints need of a *pkcs11ha.Cluster; a backend without it answers 501.
type keyAdmin interface {
	GenerateKey(ctx context.Context, partition string, spec pkcs11ha.KeySpec) (pkcs11ha.KeyInfo, error)
	ImportKey(ctx context.Context, partition string, spec pkcs11ha.KeySpec, pkcs8 []byte) (pkcs11ha.KeyInfo, error)
	DestroyKey(ctx context.Context, partition, label string) error
	Inventory(ctx context.Context, partition string) (*pkcs11ha.Inventory, error)
	SyncKeys(ctx context.Context, partition string, dryRun bool) (*pkcs11ha.SyncReport, error)
}

func (b clusterBackend) GenerateKey(ctx context.Context, partition string, spec pkcs11ha.KeySpec) (pkcs11ha.KeyInfo, error) {
	return b.cl.GenerateKey(ctx, partition, spec)
}

func (b clusterBackend) ImportKey(ctx context.Context, partition string, spec pkcs11ha.KeySpec, pkcs8 []byte) (pkcs11ha.KeyInfo, error) {
	return b.cl.ImportKey(ctx, partition, spec, pkcs8)
}

func (b clusterBackend) DestroyKey(ctx context.Context, partition, label string) error {
	return b.cl.DestroyKey(ctx, partition, label)
}

func (b clusterBackend) Inventory(ctx context.Context, partition string) (*pkcs11ha.Inventory, error) {
	return b.cl.Inventory(ctx, partition)
}

func (b clusterBackend) SyncKeys(ctx context.Context, partition string, dryRun bool) (*pkcs11ha.SyncReport, error) {
	return b.cl.SyncKeys(ctx, partition, dryRun)
}

func (s *Server) adminRoutes(keysPath, keyPath string) []adminRoute {
	return []adminRoute{
		{http.MethodPost, keysPath, s.api("admin_create_key", true, s.adminOnly(s.createKey))},
		{http.MethodDelete, keyPath, s.api("admin_destroy_key", true, s.adminOnly(s.destroyKey))},
		{http.MethodGet, "/v1/partitions/{p}/inventory", s.api("admin_inventory", true, s.adminOnly(s.inventory))},
		{http.MethodPost, "/v1/partitions/{p}/sync", s.api("admin_sync", true, s.adminOnly(s.syncKeys))},
	}
}

// adminOnly refuses clients without admin: true (403), names the caller for the audit lines and hands
// h the cluster's key management.
func (s *Server) adminOnly(h func(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo, ka keyAdmin) error) apiFunc {
	return func(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo) error {
		if !ri.admin {
			return errorf(http.StatusForbidden, sidecarapi.CodeNotAdmin, "client %q is not granted admin: true", ri.client)
		}
		ka, ok := s.be.(keyAdmin)
		if !ok {
			return errorf(http.StatusNotImplemented, sidecarapi.CodeInternal, "key management is not available")
		}
		ctx = pkcs11ha.WithActor(ctx, "http client "+ri.client+" ("+ri.peer+")")
		return h(ctx, w, r, ri, ka)
	}
}

func (s *Server) createKey(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo, ka keyAdmin) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	m, aerr := decodeFlatObject(body, "label", "algorithm", "id", "pkcs8")
	if aerr != nil {
		return aerr
	}
	req := sidecarapi.CreateKeyRequest{Label: m["label"], Algorithm: m["algorithm"], ID: m["id"], PKCS8: m["pkcs8"]}
	ri.key = req.Label
	id, err := hex.DecodeString(req.ID)
	if err != nil {
		return errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "id: not hex")
	}
	spec := pkcs11ha.KeySpec{Label: req.Label, ID: id, Algorithm: req.Algorithm}
	var ki pkcs11ha.KeyInfo
	switch {
	case req.PKCS8 != "" && req.Algorithm != "":
		return errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "give algorithm (generate) or pkcs8 (import), not both")
	case req.PKCS8 != "":
		der, aerr := decodeB64("pkcs8", req.PKCS8)
		if aerr != nil {
			return aerr
		}
		ki, err = ka.ImportKey(ctx, ri.partition, spec, der)
		clear(der)
		clear(body)
		if err != nil {
			return err
		}
	default:
		if ki, err = ka.GenerateKey(ctx, ri.partition, spec); err != nil {
			return err
		}
	}
	kj, err := toKeyInfo(ki)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sidecarapi.CreatedKey{KeyInfo: kj, Fingerprint: ki.Fingerprint})
	return nil
}

func (s *Server) destroyKey(ctx context.Context, w http.ResponseWriter, _ *http.Request, ri *reqInfo, ka keyAdmin) error {
	if err := ka.DestroyKey(ctx, ri.partition, ri.key); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) inventory(ctx context.Context, w http.ResponseWriter, _ *http.Request, ri *reqInfo, ka keyAdmin) error {
	inv, err := ka.Inventory(ctx, ri.partition)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, inv)
	return nil
}

func (s *Server) syncKeys(ctx context.Context, w http.ResponseWriter, r *http.Request, ri *reqInfo, ka keyAdmin) error {
	dry := r.URL.Query().Get("dry_run")
	if dry != "" && dry != "true" && dry != "false" {
		return errorf(http.StatusBadRequest, sidecarapi.CodeInvalidRequest, "dry_run: want true or false")
	}
	rep, err := ka.SyncKeys(ctx, ri.partition, dry == "true")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rep)
	return nil
}
