package sidecarconfig

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

func TestValidateKMS(t *testing.T) {
	base := func() *Config {
		return &Config{Topology: pkcs11ha.Topology{Partitions: []pkcs11ha.PartitionConfig{{Name: "payments"}}}}
	}
	for _, tc := range []struct {
		name   string
		server string
		kms    KMSConfig
		field  string // "" = valid
	}{
		{"off", "", KMSConfig{}, ""},
		{"on", "unix:///run/kms.sock", KMSConfig{Partition: "payments", Key: "kms-key"}, ""},
		{"section without the socket", "", KMSConfig{Partition: "payments", Key: "kms-key"}, "kms"},
		{"not unix", "tcp://127.0.0.1:1", KMSConfig{Partition: "payments", Key: "k"}, "server.kms"},
		{"relative path", "unix://run/kms.sock", KMSConfig{Partition: "payments", Key: "k"}, "server.kms"},
		{"unknown partition", "unix:///run/kms.sock", KMSConfig{Partition: "ledger", Key: "k"}, "kms.partition"},
		{"no key", "unix:///run/kms.sock", KMSConfig{Partition: "payments"}, "kms.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			c.Server.KMS, c.KMS = tc.server, tc.kms
			err := c.validateKMS()
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			var ce *pkcs11ha.ConfigError
			require.True(t, errors.As(err, &ce), "%v", err)
			require.Equal(t, tc.field, ce.Field)
		})
	}
	c := base()
	c.Server.KMS = "unix:///run/kms.sock"
	require.Equal(t, "/run/kms.sock", c.Server.KMSSocket())
}
