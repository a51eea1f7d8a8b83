package pkcs11ha

import (
	"context"
	"errors"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// The key-encryption-key ceremony of key_replication wrap (docs/keys.md, "The KEK ceremony"): a new
// AES-256 key is generated inside one device as a session object, carried to every device (itself
// included) wrapped with RSA-OAEP under a transport key pair that device generates for the occasion, and
// unwrapped there as a token object that is CKA_TRUSTED (only a security officer may set it), never
// extractable and good only for wrapping. Session objects die with the SO sessions at the end: no copy
// of the KEK is left extractable anywhere, and none ever leaves an HSM in clear. Each run makes a new
// KEK (a new CKA_ID); the sync uses any KEK two devices share.

// KEKReport says which devices received the new key-encryption key.
type KEKReport struct {
	Partition string            `json:"partition"`
	ID        string            `json:"id"`     // CKA_ID (hex) of the new KEK on every device
	Source    string            `json:"source"` // the device that generated it
	Done      []string          `json:"done"`
	Refused   map[string]string `json:"refused"` // device -> why
}

// InitKEK runs the KEK ceremony for partition on every device of cfg, logging in as security officer
// with soPIN (never retried when refused, never logged). It loads its own module instances: run it
// where no cluster holds the same in-process modules (hsm-ha-proxy keys init-kek is a process of its
// own). The error is non-nil when the config is invalid or no device could generate the KEK; devices
// that refused are in the report.
func InitKEK(ctx context.Context, cfg *Config, partition, soPIN string) (*KEKReport, error) {
	if cfg == nil {
		return nil, errors.New("pkcs11ha: nil config")
	}
	s, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	pi, err := s.cfg.partIndex(partition)
	if err != nil {
		return nil, err
	}
	res, err := devicebackend.InitKEK(ctx, s.backend(), pi, soPIN, kekLabel)
	if res == nil {
		return nil, err
	}
	return &KEKReport{Partition: partition, ID: res.ID, Source: res.Source, Done: res.Done, Refused: res.Refused}, err
}
