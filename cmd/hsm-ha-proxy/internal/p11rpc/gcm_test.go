package p11rpc

import (
	"bytes"
	"testing"
)

// TestGCMParams: CK_GCM_PARAMS as p11-kit 0.26.4's client writes it (rpc-message.c,
// p11_rpc_buffer_add_aes_gcm_mechanism_value: pIv, ulIvBits, pAAD, ulTagBits) in C_EncryptInit, read back
// field by field; a truncated or overlong parameter is a protocol error; other mechanisms have none.
func TestGCMParams(t *testing.T) {
	iv := bytes.Repeat([]byte{0x01}, 12)
	fields := msg(nil).array(iv).u64(96).array([]byte("aad")).u64(128)
	tests := []struct {
		name    string
		version byte
		body    msg
		want    *GCMParams
		bad     bool
	}{
		{"v2", 2, request(CallEncryptInit).u64(7).u32(CKMAESGCM).y(1).y(fields...).u64(9),
			&GCMParams{IV: iv, IVBits: 96, AAD: []byte("aad"), TagBits: 128}, false},
		{"v1", 1, request(CallDecryptInit).u64(7).u32(CKMAESGCM).y(fields...).u64(9),
			&GCMParams{IV: iv, IVBits: 96, AAD: []byte("aad"), TagBits: 128}, false},
		{"NULL AAD", 2, request(CallEncryptInit).u64(7).u32(CKMAESGCM).y(1).array(iv).u64(0).array(nil).u64(96).u64(9),
			&GCMParams{IV: iv, TagBits: 96}, false},
		{"no parameter", 2, request(CallEncryptInit).u64(7).u32(CKMAESGCM).y(0).u64(9), nil, false},
		{"another mechanism", 2, request(CallEncryptInit).u64(7).u32(ckmAESCBC).y(1).array(iv).u64(9), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRequest(tt.body, tt.version)
			if err != nil {
				t.Fatal(err)
			}
			mustUlong(t, r, 7)
			m := r.Mechanism()
			mustUlong(t, r, 9)
			if err := r.Finish(); err != nil {
				t.Fatal(err)
			}
			got, err := m.Clone().GCM()
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tt.want == nil) || got != nil && (!bytes.Equal(got.IV, tt.want.IV) ||
				got.IVBits != tt.want.IVBits || !bytes.Equal(got.AAD, tt.want.AAD) || got.TagBits != tt.want.TagBits) {
				t.Fatalf("GCM() = %+v, want %+v", got, tt.want)
			}
		})
	}
	for _, p := range [][]byte{fields[:len(fields)-1], append(bytes.Clone(fields), 0), {}} {
		if _, err := (&Mechanism{Type: CKMAESGCM, Param: p}).GCM(); err == nil {
			t.Errorf("GCM() of %x: no error", p)
		}
	}
}
