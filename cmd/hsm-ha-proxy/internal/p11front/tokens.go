package p11front

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// What the front end says about itself.
const (
	manufacturer = "pkcs11-ha"
	model        = "pkcs11-ha"
	description  = "pkcs11-ha PKCS#11 front end"
	// rpcHandshake is what p11-kit-client sends in C_Initialize (rpc-message.h P11_RPC_HANDSHAKE).
	rpcHandshake = "PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"
)

// tokenFlags: the token is initialised and needs no login (the sidecar holds the partition's PIN and
// access is decided by the peer's identity), so applications run without a PIN. A protected
// authentication path makes tools that log in anyway send no PIN rather than prompt for one.
const tokenFlags = pkcs11.CKF_TOKEN_INITIALIZED | pkcs11.CKF_USER_PIN_INITIALIZED | pkcs11.CKF_RNG |
	pkcs11.CKF_PROTECTED_AUTHENTICATION_PATH

func (c *conn) cInitialize(req *p11rpc.Request, _ *p11rpc.Reply) error {
	hs := req.ByteArray()
	req.Byte()      // reserved
	req.ByteArray() // the client's initialization arguments, nothing the server uses
	if err := req.Finish(); err != nil {
		return err
	}
	if !bytes.Equal(hs, []byte(rpcHandshake)) {
		c.log.Warn("PKCS#11 C_Initialize with an unknown handshake string; answered CKR_GENERAL_ERROR")
		return rvErr(pkcs11.CKR_GENERAL_ERROR, "bad handshake")
	}
	if !c.initialized.CompareAndSwap(false, true) {
		return rvErr(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED, "already initialized")
	}
	return nil
}

func (c *conn) cFinalize(req *p11rpc.Request, _ *p11rpc.Reply) error {
	if err := req.Finish(); err != nil {
		return err
	}
	c.s.m.sessions.Sub(float64(c.sess.removeSlot(allSlots)))
	c.initialized.Store(false)
	return nil
}

func (c *conn) cGetInfo(req *p11rpc.Request, w *p11rpc.Reply) error {
	if err := req.Finish(); err != nil {
		return err
	}
	w.Version(2, 40)
	w.String(manufacturer)
	w.Ulong(0)
	w.String(description)
	w.Version(1, 0)
	return nil
}

// visibleSlots are the slot ids of the partitions the peer is granted now, in config order.
func (c *conn) visibleSlots() []uint64 {
	_, parts, ok := c.grants()
	var out []uint64
	if !ok {
		return out
	}
	for i, p := range c.s.opts.Partitions {
		if parts[p] {
			out = append(out, uint64(i)+1)
		}
	}
	return out
}

func (c *conn) cGetSlotList(req *p11rpc.Request, w *p11rpc.Reply) error {
	req.Byte() // tokenPresent: every slot has its token
	n, null := req.UlongBuffer()
	if err := req.Finish(); err != nil {
		return err
	}
	writeUlongs(w, c.visibleSlots(), n, null)
	return nil
}

// writeUlongs answers an 'fu' buffer of n entries (null: a size query) with v, or with its length alone
// when the buffer is too small (which the client turns into CKR_BUFFER_TOO_SMALL). An empty list is
// always an empty array: p11-kit 0.24 sends a real zero-length buffer as NULL, and a length alone would
// be CKR_BUFFER_TOO_SMALL for it.
func writeUlongs(w *p11rpc.Reply, v []uint64, n uint64, null bool) {
	if len(v) > 0 && (null || n < uint64(len(v))) {
		w.UlongArrayLen(uint64(len(v)))
		return
	}
	w.UlongArray(append([]uint64{}, v...))
}

func (c *conn) cGetSlotInfo(req *p11rpc.Request, w *p11rpc.Reply) error {
	slot := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	part, err := c.slot(slot)
	if err != nil {
		return err
	}
	w.String("pkcs11-ha partition " + part)
	w.String(manufacturer)
	w.Ulong(pkcs11.CKF_TOKEN_PRESENT)
	w.Version(1, 0)
	w.Version(1, 0)
	return nil
}

func (c *conn) cGetTokenInfo(req *p11rpc.Request, w *p11rpc.Reply) error {
	slot := req.Ulong()
	if err := req.Finish(); err != nil {
		return err
	}
	part, err := c.slot(slot)
	if err != nil {
		return err
	}
	all, rw := c.sess.counts(slot)
	unavailable := uint64(pkcs11.CK_UNAVAILABLE_INFORMATION)
	w.String(part)
	w.String(manufacturer)
	w.String(model)
	w.String(serialOf(part))
	w.Ulong(tokenFlags)
	for _, v := range []uint64{MaxSessions, all, MaxSessions, rw, 255, 0,
		unavailable, unavailable, unavailable, unavailable} {
		w.Ulong(v)
	}
	w.Version(1, 0)
	w.Version(1, 0)
	w.String("") // utcTime: no clock on the token
	return nil
}

// serialOf is the token serial of a partition: 16 hex digits of SHA-256 of its name, the same in every
// sidecar and across restarts (the devices' own serials differ per device).
func serialOf(partition string) string {
	sum := sha256.Sum256([]byte(partition))
	return hex.EncodeToString(sum[:8])
}
