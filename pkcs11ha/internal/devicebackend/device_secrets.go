package devicebackend

import (
	"bytes"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// handle returns the cached handle of op's key on st: a private key, or a secret key for Seal, Open and MAC.
func (st *partState) handle(op *Op) (pkcs11.ObjectHandle, bool) {
	if !op.Kind.secret() {
		k := st.key(op.Label)
		if k == nil {
			return 0, false
		}
		return k.priv, true
	}
	st.keysMu.RLock()
	k := st.secrets[op.Label]
	st.keysMu.RUnlock()
	if k == nil {
		return 0, false
	}
	return k.handle, true
}

// refresh looks op's key up again after a stale-handle error; the key must be the same one (public key,
// or key check value for a secret key).
func (p *devPartition) refresh(st *partState, s pkcs11.SessionHandle, op *Op) error {
	if !op.Kind.secret() {
		_, err := p.refreshKey(st, s, op.Label, op.PubDER)
		return err
	}
	ks, err := listSecretKeys(st.in.ctx, s, op.Label)
	if err != nil {
		return errclass.P11Err(p.dev.Name, p.Cfg.Name, errclass.OpFindObjects, err)
	}
	if len(ks) == 0 {
		return &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpFindObjects, Class: errclass.ClassBusy, Err: fmt.Errorf("key %q is gone", op.Label)}
	}
	if !bytes.Equal(ks[0].KCV, op.PubDER) {
		return &errclass.DeviceError{Device: p.dev.Name, Partition: p.Cfg.Name, Op: errclass.OpFindObjects, Class: errclass.ClassBusy, Err: fmt.Errorf("key %q changed its check value", op.Label)}
	}
	st.keysMu.Lock()
	st.secrets[op.Label] = ks[0]
	st.keysMu.Unlock()
	return nil
}

// SecretKeys is a snapshot of partition pi's secret keys by label; nil when the partition is not open.
func (d *Device) SecretKeys(pi int) map[string]*SecretObject {
	st := d.Parts[pi].St.Load()
	if st == nil {
		return nil
	}
	st.keysMu.RLock()
	defer st.keysMu.RUnlock()
	out := make(map[string]*SecretObject, len(st.secrets))
	for l, k := range st.secrets {
		out[l] = k
	}
	return out
}
