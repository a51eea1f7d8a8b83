package pkcs11ha

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestMajorityKey is the reference-key vote of Open's key check: the public key most devices hold wins,
// config order breaks ties, devices without the label do not vote.
func TestMajorityKey(t *testing.T) {
	a := func(dev string) *keyObject { return &keyObject{label: dev, pubDER: []byte("key A")} }
	b := func(dev string) *keyObject { return &keyObject{label: dev, pubDER: []byte("key B")} }
	c := func(dev string) *keyObject { return &keyObject{label: dev, pubDER: []byte("key C")} }
	tests := []struct {
		name string
		held []*keyObject
		want string // label of the winning entry (the test puts the device name there); "" for nil
	}{
		{"nobody holds it", []*keyObject{nil, nil}, ""},
		{"empty", nil, ""},
		{"one device", []*keyObject{nil, a("d2")}, "d2"},
		{"all agree: first wins", []*keyObject{a("d1"), a("d2"), a("d3")}, "d1"},
		{"one differs", []*keyObject{a("d1"), b("d2"), a("d3")}, "d1"},
		{"the first differs", []*keyObject{b("d1"), a("d2"), a("d3"), a("d4")}, "d2"},
		{"tie: config order", []*keyObject{b("d1"), a("d2"), a("d3"), b("d4")}, "d1"},
		{"tie of two", []*keyObject{a("d1"), b("d2")}, "d1"},
		{"missing ones do not vote", []*keyObject{nil, nil, b("d3"), c("d4"), c("d5")}, "d4"},
		{"three-way tie", []*keyObject{c("d1"), b("d2"), a("d3")}, "d1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := majority(tt.held, samePublicKey)
			if tt.want == "" {
				assert.Nil(t, got)
				return
			}
			if assert.NotNil(t, got) {
				assert.Equal(t, tt.want, got.label)
			}
		})
	}
}
