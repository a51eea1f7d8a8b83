package sidecarconfig

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// KMSConfig names the AES key the Kubernetes KMS v2 door (server.kms) seals data keys with
// (docs/encryption.md, "Kubernetes KMS v2"). Rotating is configuring a new label: ciphertexts made with
// the old one stay readable while its key is on the HSMs.
type KMSConfig struct {
	Partition string `yaml:"partition"`
	Key       string `yaml:"key"` // the AES key's CKA_LABEL
}

// KMSSocket is server.kms's socket path ("" when the door is off).
func (s *ServerConfig) KMSSocket() string {
	path, _ := strings.CutPrefix(s.KMS, "unix://")
	return path
}

// validateKMS checks server.kms against the kms: section and the partitions.
func (c *Config) validateKMS() error {
	if c.Server.KMS == "" {
		if c.KMS != (KMSConfig{}) {
			return &pkcs11ha.ConfigError{Field: "kms", Msg: "only used with server.kms"}
		}
		return nil
	}
	path, ok := strings.CutPrefix(c.Server.KMS, "unix://")
	if !ok || !strings.HasPrefix(path, "/") {
		return &pkcs11ha.ConfigError{Field: "server.kms", Msg: fmt.Sprintf("%q: want unix:///PATH (an absolute socket path)", c.Server.KMS)}
	}
	for _, other := range []string{c.Server.Listen, c.Server.PKCS11} {
		if other == c.Server.KMS {
			return &pkcs11ha.ConfigError{Field: "server.kms", Msg: "must differ from server.listen and server.pkcs11"}
		}
	}
	if !slices.Contains(c.PartitionNames(), c.KMS.Partition) {
		return &pkcs11ha.ConfigError{Field: "kms.partition", Msg: fmt.Sprintf("%q is not a configured partition", c.KMS.Partition)}
	}
	if c.KMS.Key == "" {
		return &pkcs11ha.ConfigError{Field: "kms.key", Msg: "the AES key's label is required with server.kms"}
	}
	return nil
}
