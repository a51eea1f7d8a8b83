package sidecarconfig

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// TestServerSocketsConfig: server.pkcs11 is unix:///ABSOLUTE-PATH, differs from server.listen, and
// server.pkcs11_group needs it; server.listen_group needs a unix:// listener (the default is one).
func TestServerSocketsConfig(t *testing.T) {
	tests := []struct {
		name  string
		sc    ServerConfig
		field string // "" = valid
	}{
		{"off", ServerConfig{}, ""},
		{"on", ServerConfig{PKCS11: "unix:///run/hsm-ha-proxy/pkcs11.sock"}, ""},
		{"on with a group", ServerConfig{PKCS11: "unix:///run/p.sock", PKCS11Group: "hsm-apps"}, ""},
		{"a relative path", ServerConfig{PKCS11: "unix://run/p.sock"}, "server.pkcs11"},
		{"tcp", ServerConfig{PKCS11: "tcp://127.0.0.1:1"}, "server.pkcs11"},
		{"the HTTP API's socket", ServerConfig{Listen: "unix:///run/x.sock", PKCS11: "unix:///run/x.sock"}, "server.pkcs11"},
		{"the HTTP API's default socket", ServerConfig{PKCS11: "unix:///run/hsm-ha-proxy.sock"}, "server.pkcs11"},
		{"a group without the socket", ServerConfig{PKCS11Group: "hsm-apps"}, "server.pkcs11_group"},
		{"HTTP socket group, default listener", ServerConfig{ListenGroup: "hsm-apps"}, ""},
		{"HTTP socket group, unix listener", ServerConfig{Listen: "unix:///run/x.sock", ListenGroup: "4242"}, ""},
		{"HTTP socket group on tcp", ServerConfig{Listen: "tcp://127.0.0.1:8443", ListenGroup: "hsm-apps"}, "server.listen_group"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.sc.validatePKCS11()
			if err == nil {
				err = tt.sc.validateListenGroup()
			}
			if tt.field == "" {
				assert.NoError(t, err)
				return
			}
			var ce *pkcs11ha.ConfigError
			if assert.True(t, errors.As(err, &ce), "%v", err) {
				assert.Equal(t, tt.field, ce.Field)
			}
		})
	}
}
