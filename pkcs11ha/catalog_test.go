package pkcs11ha

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMajorityKey(t *testing.T) {
	key := func(id string) *keyObject {
		return &keyObject{label: "k", id: []byte(id), pubDER: []byte("pub-" + id[:1])}
	}
	a1, a2, a3, b1, b2 := key("a1"), key("a2"), key("a3"), key("b1"), key("b2")
	on := func(ks ...*keyObject) []map[string]*keyObject {
		var held []map[string]*keyObject
		for _, k := range ks {
			m := map[string]*keyObject{}
			if k != nil {
				m["k"] = k
			}
			held = append(held, m)
		}
		return held
	}
	tests := []struct {
		name string
		held []map[string]*keyObject
		want *keyObject
	}{
		{"one device", on(a1), a1},
		{"all agree: the first", on(a1, a2, a3), a1},
		{"the majority, not the first", on(b1, a1, a2), a1},
		{"the majority among holders", on(nil, b1, a1, nil, a2), a1},
		{"tie: the first in config order", on(b1, a1, b2, a2), b1},
		{"tie, other order", on(a1, b1), a1},
		{"nobody holds it", on(nil, nil), nil},
		{"no device open", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Same(t, tc.want, majorityKey(tc.held, "k"))
		})
	}
}
