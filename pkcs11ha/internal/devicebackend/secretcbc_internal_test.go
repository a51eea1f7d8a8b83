package devicebackend

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestUnpadPKCS7: the fallback's padding check takes exactly the PKCS#7 paddings of 1 to 16 bytes and
// nothing else, whatever precedes them.
func TestUnpadPKCS7(t *testing.T) {
	for n := 0; n <= 40; n++ {
		data := bytes.Repeat([]byte{0xa5}, n)
		pad := 16 - n%16
		padded := append(bytes.Clone(data), bytes.Repeat([]byte{byte(pad)}, pad)...)
		got, ok := unpadPKCS7(padded)
		require.True(t, ok, n)
		require.Equal(t, n, got, n)
		for i := 1; i <= pad; i++ { // any byte of the padding changed
			bad := bytes.Clone(padded)
			bad[len(bad)-i] ^= 0x40
			_, ok := unpadPKCS7(bad)
			require.False(t, ok, "%d bytes, padding byte -%d changed", n, i)
		}
	}
	for _, tc := range []struct {
		name  string
		block []byte
		n     int
		ok    bool
	}{
		{"last byte 0", append(make([]byte, 15), 0), 0, false},
		{"last byte 17", append(make([]byte, 15), 17), 0, false},
		{"last byte 255", bytes.Repeat([]byte{255}, 16), 0, false},
		{"16 bytes of 16", bytes.Repeat([]byte{16}, 16), 0, true},
		{"one byte of 1 after 2s", append(bytes.Repeat([]byte{2}, 15), 1), 15, true},
		{"2 before 1 is data", append(bytes.Repeat([]byte{9}, 14), 2, 2), 14, true},
	} {
		n, ok := unpadPKCS7(tc.block)
		require.Equal(t, tc.ok, ok, tc.name)
		if ok {
			require.Equal(t, tc.n, n, tc.name)
		}
	}
}
