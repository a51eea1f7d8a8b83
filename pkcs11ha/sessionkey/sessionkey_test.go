package sessionkey

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestApply(t *testing.T) {
	pt := []byte("0123456789abcdef")
	other := errors.New("device down")
	refused := fmt.Errorf("%w (device d)", rsa.ErrDecryption)
	opts := &rsa.PKCS1v15DecryptOptions{SessionKeyLen: 16}
	tests := []struct {
		name    string
		opts    crypto.DecrypterOpts
		pt      []byte
		err     error
		random  bool // want 16 random bytes
		wantErr error
	}{
		{"no options", nil, pt, nil, false, nil},
		{"oaep untouched", &rsa.OAEPOptions{}, nil, refused, false, rsa.ErrDecryption},
		{"no session key", &rsa.PKCS1v15DecryptOptions{}, nil, refused, false, rsa.ErrDecryption},
		{"good plaintext", opts, pt, nil, false, nil},
		{"refused", opts, nil, refused, true, nil},
		{"wrong length", opts, pt[:3], nil, true, nil},
		{"other error kept", opts, nil, other, false, other},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Apply(bytes.NewReader(bytes.Repeat([]byte{7}, 16)), tc.opts, tc.pt, tc.err)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			if tc.random {
				require.Equal(t, bytes.Repeat([]byte{7}, 16), got)
			} else {
				require.Equal(t, tc.pt, got)
			}
		})
	}
}
