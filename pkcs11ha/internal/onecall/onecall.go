package onecall

/*
#include <stdlib.h>

// The head of CK_FUNCTION_LIST (PKCS#11 2.40 pkcs11f.h order): a CK_VERSION, then the function pointers.
// C_Encrypt (30), C_EncryptUpdate (31), C_Decrypt (34) and C_Sign (43) have identical prototypes;
// C_EncryptFinal (32) has one of its own.
typedef unsigned long ck_ulong;
typedef ck_ulong (*single_part)(ck_ulong session, unsigned char *in, ck_ulong in_len, unsigned char *out, ck_ulong *out_len);
typedef ck_ulong (*final_part)(ck_ulong session, unsigned char *out, ck_ulong *out_len);

struct ck_function_list_head {
	unsigned char version[2];
	void *fn[44];
};

// miekg/pkcs11 v1.1.2's struct ctx (pkcs11.go): the dlopen handle, then the function list.
struct miekg_ctx {
	void *handle;
	struct ck_function_list_head *sym;
};

static ck_ulong call_single(void *ctx, int index, ck_ulong session, unsigned char *in, ck_ulong in_len,
	unsigned char *out, ck_ulong *out_len)
{
	struct miekg_ctx *c = ctx;
	single_part f = (single_part)c->sym->fn[index];
	return f(session, in, in_len, out, out_len);
}

static ck_ulong call_final(void *ctx, int index, ck_ulong session, unsigned char *out, ck_ulong *out_len)
{
	struct miekg_ctx *c = ctx;
	final_part f = (final_part)c->sym->fn[index];
	return f(session, out, out_len);
}
*/
import "C"

import (
	"errors"
	"reflect"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Indexes of the functions in CK_FUNCTION_LIST after its version.
const (
	fnEncrypt       = 30
	fnEncryptUpdate = 31
	fnEncryptFinal  = 32
	fnDecrypt       = 34
	fnSign          = 43
)

// ErrLayout is returned when the pinned miekg/pkcs11 layout assumption does not hold (another version):
// callers then use miekg/pkcs11's own two-call path.
var ErrLayout = errors.New("onecall: miekg/pkcs11's Ctx layout is not the one this package was written for")

// layoutOK: pkcs11.Ctx is a struct with one field, a pointer to its C context (v1.1.2).
var layoutOK = func() bool {
	t := reflect.TypeOf(pkcs11.Ctx{})
	return t.NumField() == 1 && t.Field(0).Type.Kind() == reflect.Pointer && t.Size() == unsafe.Sizeof(uintptr(0))
}()

// cctx returns the C context of c, or nil.
func cctx(c *pkcs11.Ctx) unsafe.Pointer {
	if c == nil || !layoutOK {
		return nil
	}
	return *(*unsafe.Pointer)(unsafe.Pointer(c))
}

func call(c *pkcs11.Ctx, fn int, s pkcs11.SessionHandle, in, out []byte) (int, error) {
	p := cctx(c)
	if p == nil {
		return 0, ErrLayout
	}
	if len(out) == 0 {
		return 0, pkcs11.Error(pkcs11.CKR_BUFFER_TOO_SMALL)
	}
	if len(in) == 0 {
		// A NULL pData is CKR_ARGUMENTS_BAD to some tokens (SoftHSM) even with a zero length: pass a valid
		// pointer, as miekg/pkcs11 does.
		in = []byte{0}[:0:1]
	}
	inPtr := (*C.uchar)(unsafe.Pointer(unsafe.SliceData(in)))
	n := C.ck_ulong(len(out))
	// in and out are Go memory passed for the duration of the call only (cgo pointer rules allow it: they
	// hold no Go pointers).
	rv := C.call_single(p, C.int(fn), C.ck_ulong(s), inPtr, C.ck_ulong(len(in)), (*C.uchar)(unsafe.Pointer(&out[0])), &n)
	if rv != 0 {
		return 0, pkcs11.Error(rv)
	}
	return int(n), nil
}

// Sign calls C_Sign once into out; the active sign operation ends unless the token answers
// CKR_BUFFER_TOO_SMALL (then it stays active, and a call with a larger buffer may follow).
func Sign(c *pkcs11.Ctx, s pkcs11.SessionHandle, in, out []byte) (int, error) {
	return call(c, fnSign, s, in, out)
}

// Decrypt calls C_Decrypt once into out, as Sign does for C_Sign.
func Decrypt(c *pkcs11.Ctx, s pkcs11.SessionHandle, in, out []byte) (int, error) {
	return call(c, fnDecrypt, s, in, out)
}

// Encrypt calls C_Encrypt once into out, as Sign does for C_Sign.
func Encrypt(c *pkcs11.Ctx, s pkcs11.SessionHandle, in, out []byte) (int, error) {
	return call(c, fnEncrypt, s, in, out)
}

// EncryptUpdate calls C_EncryptUpdate once into out (a part whose output size the caller knows: a whole
// block of a block cipher without padding).
func EncryptUpdate(c *pkcs11.Ctx, s pkcs11.SessionHandle, in, out []byte) (int, error) {
	return call(c, fnEncryptUpdate, s, in, out)
}

// EncryptFinal calls C_EncryptFinal once into out, which must not be empty: a NULL or empty buffer would
// only ask for the size (p11-kit's RPC sends an empty one as NULL) and leave the operation active.
func EncryptFinal(c *pkcs11.Ctx, s pkcs11.SessionHandle, out []byte) (int, error) {
	p := cctx(c)
	if p == nil {
		return 0, ErrLayout
	}
	if len(out) == 0 {
		return 0, pkcs11.Error(pkcs11.CKR_BUFFER_TOO_SMALL)
	}
	n := C.ck_ulong(len(out))
	rv := C.call_final(p, C.int(fnEncryptFinal), C.ck_ulong(s), (*C.uchar)(unsafe.Pointer(&out[0])), &n)
	if rv != 0 {
		return 0, pkcs11.Error(rv)
	}
	return int(n), nil
}

// TooSmall reports whether err is CKR_BUFFER_TOO_SMALL (or the layout refusal): the caller should take
// the size-query path.
func TooSmall(err error) bool {
	var rv pkcs11.Error
	return errors.Is(err, ErrLayout) || (errors.As(err, &rv) && rv == pkcs11.CKR_BUFFER_TOO_SMALL)
}
