package sidecarclient

import (
	"context"
	"net/http"
	"net/url"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// Key management, for a client the sidecar grants admin: true (docs/keys.md). A client without it gets
// an *APIError with Code sidecarapi.CodeNotAdmin.

// CreateKey generates (req.Algorithm) or imports (req.PKCS8) a key on every device of partition.
func (c *Client) CreateKey(ctx context.Context, partition string, req sidecarapi.CreateKeyRequest) (*sidecarapi.CreatedKey, error) {
	var out sidecarapi.CreatedKey
	if err := c.do(ctx, http.MethodPost, "/v1/partitions/"+url.PathEscape(partition)+"/keys", &req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DestroyKey destroys label on every device of partition (tombstoned: it never comes back).
func (c *Client) DestroyKey(ctx context.Context, partition, label string) error {
	return c.do(ctx, http.MethodDelete, "/v1/partitions/"+url.PathEscape(partition)+"/keys/"+url.PathEscape(label), nil, nil)
}

// Inventory returns what every device holds of partition, read from each device.
func (c *Client) Inventory(ctx context.Context, partition string) (*sidecarapi.Inventory, error) {
	var out sidecarapi.Inventory
	if err := c.do(ctx, http.MethodGet, "/v1/partitions/"+url.PathEscape(partition)+"/inventory", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SyncKeys brings every device of partition up to date (dryRun: only reports what it would do).
func (c *Client) SyncKeys(ctx context.Context, partition string, dryRun bool) (*sidecarapi.SyncReport, error) {
	path := "/v1/partitions/" + url.PathEscape(partition) + "/sync"
	if dryRun {
		path += "?dry_run=true"
	}
	var out sidecarapi.SyncReport
	if err := c.do(ctx, http.MethodPost, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
