package pkcs11ha

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// TestMajorityKey is the reference-key vote of Open's key check: the public key most devices hold wins,
// config order breaks ties, devices without the label do not vote.
func TestMajorityKey(t *testing.T) {
	a := func(dev string) *devicebackend.KeyObject {
		return &devicebackend.KeyObject{Label: dev, PubDER: []byte("key A")}
	}
	b := func(dev string) *devicebackend.KeyObject {
		return &devicebackend.KeyObject{Label: dev, PubDER: []byte("key B")}
	}
	c := func(dev string) *devicebackend.KeyObject {
		return &devicebackend.KeyObject{Label: dev, PubDER: []byte("key C")}
	}
	tests := []struct {
		name string
		held []*devicebackend.KeyObject
		want string // label of the winning entry (the test puts the device name there); "" for nil
	}{
		{"nobody holds it", []*devicebackend.KeyObject{nil, nil}, ""},
		{"empty", nil, ""},
		{"one device", []*devicebackend.KeyObject{nil, a("d2")}, "d2"},
		{"all agree: first wins", []*devicebackend.KeyObject{a("d1"), a("d2"), a("d3")}, "d1"},
		{"one differs", []*devicebackend.KeyObject{a("d1"), b("d2"), a("d3")}, "d1"},
		{"the first differs", []*devicebackend.KeyObject{b("d1"), a("d2"), a("d3"), a("d4")}, "d2"},
		{"tie: config order", []*devicebackend.KeyObject{b("d1"), a("d2"), a("d3"), b("d4")}, "d1"},
		{"tie of two", []*devicebackend.KeyObject{a("d1"), b("d2")}, "d1"},
		{"missing ones do not vote", []*devicebackend.KeyObject{nil, nil, b("d3"), c("d4"), c("d5")}, "d4"},
		{"three-way tie", []*devicebackend.KeyObject{c("d1"), b("d2"), a("d3")}, "d1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := majority(tt.held, samePublicKey)
			if tt.want == "" {
				assert.Nil(t, got)
				return
			}
			if assert.NotNil(t, got) {
				assert.Equal(t, tt.want, got.Label)
			}
		})
	}
}
