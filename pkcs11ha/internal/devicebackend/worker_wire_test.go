package devicebackend

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// TestRunRoundTrip: every field of a Op survives the worker protocol's binary encoding.
func TestRunRoundTrip(t *testing.T) {
	ops := []*Op{
		{Kind: KindSign, Label: "ec-key", PubDER: []byte{1, 2, 3}, Mech: MechSpec{Type: pkcs11.CKM_ECDSA}, Input: bytes.Repeat([]byte{7}, 32), OutLen: 64},
		{Kind: KindSign, Label: "rsa", PubDER: []byte{9}, Input: []byte("d"), OutLen: 256,
			Mech: MechSpec{Type: pkcs11.CKM_RSA_PKCS_PSS, PSSHash: pkcs11.CKM_SHA256, PSSMGF: pkcs11.CKG_MGF1_SHA256, PSSSalt: 32}},
		{Kind: KindDecrypt, Label: "", Input: nil, KeySize: 256, OAEPFallback: true, OAEPHash: crypto.SHA256, OAEPMGFHash: crypto.SHA1,
			Mech: MechSpec{Type: pkcs11.CKM_RSA_PKCS_OAEP, OAEPHash: pkcs11.CKM_SHA256, OAEPMGF: pkcs11.CKG_MGF1_SHA1, OAEPLabel: []byte("label")}},
		// Secret keys (secretops.go): PubDER carries the key check value, the GCM parameters ride in MechSpec.
		{Kind: KindSeal, Label: "aes-key", PubDER: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Input: []byte("pt"), OutLen: 18, GCMFallback: true,
			Mech: MechSpec{Type: pkcs11.CKM_AES_GCM, GCMIV: bytes.Repeat([]byte{3}, 12), GCMAAD: []byte("aad"), GCMTagBits: 128}},
		{Kind: KindOpen, Label: "aes-key", Input: make([]byte, 40), OutLen: 24,
			Mech: MechSpec{Type: pkcs11.CKM_AES_GCM, GCMIV: []byte("0123456789ab"), GCMTagBits: 128}},
		{Kind: KindMAC, Label: "hmac-key", Input: []byte("data"), OutLen: 48, Mech: MechSpec{Type: pkcs11.CKM_SHA384_HMAC}},
		// AES-CBC-PAD (secretcbcop.go): the IV rides in MechSpec, the fallback flag in the op.
		{Kind: KindCBCEncrypt, Label: "aes-key", PubDER: []byte{8, 7}, Input: []byte("seventeen bytes!!"), OutLen: 32, CBCFallback: true,
			Mech: MechSpec{Type: pkcs11.CKM_AES_CBC_PAD, CBCIV: bytes.Repeat([]byte{9}, 16)}},
		{Kind: KindCBCDecrypt, Label: "aes-key", Input: make([]byte, 48), OutLen: 48,
			Mech: MechSpec{Type: pkcs11.CKM_AES_CBC_PAD, CBCIV: []byte("0123456789abcdef")}},
	}
	for i, op := range ops {
		pi, timeout, got, err := decodeRun(encodeRun(i, time.Duration(i+1)*time.Millisecond, op))
		require.NoError(t, err)
		require.Equal(t, i, pi)
		require.Equal(t, time.Duration(i+1)*time.Millisecond, timeout)
		// nil and empty byte slices are the same on the wire
		norm := func(o *Op) Op {
			c := *o
			for _, b := range []*[]byte{&c.PubDER, &c.Input, &c.Mech.OAEPLabel, &c.Mech.GCMIV, &c.Mech.GCMAAD, &c.Mech.CBCIV} {
				if len(*b) == 0 {
					*b = nil
				}
			}
			return c
		}
		require.Equal(t, norm(op), norm(got))
	}
}

// TestWireErrors: the typed errors the router and the callers branch on keep their type and class across
// the process boundary.
func TestWireErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		is   func(error) bool
	}{
		{"device down", &errclass.DeviceError{Device: "d", Partition: "p", Op: errclass.OpSign, Code: pkcs11.CKR_DEVICE_ERROR, Class: errclass.ClassDeviceDown, Err: pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)},
			func(e error) bool {
				return errors.Is(e, errclass.ErrDeviceDown) && errclass.ClassOf(e) == errclass.ClassDeviceDown
			}},
		{"decrypt refused", &errclass.DeviceError{Device: "d", Op: errclass.OpDecrypt, Code: pkcs11.CKR_ENCRYPTED_DATA_INVALID, Class: errclass.ClassDecryptRefused},
			func(e error) bool { return errclass.ClassOf(e) == errclass.ClassDecryptRefused }},
		{"our own verdict", errclass.DownErr("d", "p", errclass.OpOpenSession, "partition not open"),
			func(e error) bool {
				return errclass.ClassOf(e) == errclass.ClassDeviceDown && e.Error() == errclass.DownErr("d", "p", errclass.OpOpenSession, "partition not open").Error()
			}},
		{"input", errclass.InputErr("bad digest"), func(e error) bool { var ie *errclass.InputError; return errors.As(e, &ie) && ie.Msg == "bad digest" }},
		{"mechanism", &errclass.MechanismError{Device: "d", Mechanism: "OAEP"}, func(e error) bool { return errors.Is(e, errclass.ErrUnsupported) }},
		{"deadline", context.DeadlineExceeded, func(e error) bool { return errors.Is(e, context.DeadlineExceeded) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := toWire(tc.err).err()
			require.True(t, tc.is(got), "%v -> %v", tc.err, got)
			require.Equal(t, errclass.ClassOf(tc.err), errclass.ClassOf(got))
		})
	}
}

// FuzzDecodeRun: whatever bytes arrive, decodeRun returns an error or an op that encodes back to them.
func FuzzDecodeRun(f *testing.F) {
	f.Add(encodeRun(0, time.Second, &Op{Kind: KindSign, Label: "k", Input: []byte("x"), OutLen: 64}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		pi, timeout, op, err := decodeRun(b)
		if err != nil {
			return
		}
		if re := encodeRun(pi, timeout, op); !bytes.Equal(re, b) {
			t.Fatalf("decoded %+v, which encodes to %x, not %x", op, re, b)
		}
	})
}

// FuzzReadFrame: a frame reader never panics or allocates past the frame bound, whatever it is sent.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	_ = writeFrame(&buf, 7, msgRun, []byte("payload"))
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			fr, err := readFrame(r)
			if err != nil {
				return
			}
			if len(fr.payload) > maxWorkerFrame {
				t.Fatal("frame past the bound")
			}
		}
	})
}
