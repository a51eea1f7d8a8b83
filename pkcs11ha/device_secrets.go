package pkcs11ha

import (
	"bytes"
	"fmt"

	"github.com/miekg/pkcs11"
)

// handle returns the cached handle of op's key on st: a private key, or a secret key for Seal, Open and MAC.
func (st *partState) handle(op *deviceOp) (pkcs11.ObjectHandle, bool) {
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
func (p *devPartition) refresh(st *partState, s pkcs11.SessionHandle, op *deviceOp) error {
	if !op.Kind.secret() {
		_, err := p.refreshKey(st, s, op.Label, op.PubDER)
		return err
	}
	ks, err := listSecretKeys(st.in.ctx, s, op.Label)
	if err != nil {
		return p11err(p.dev.name, p.cfg.Name, opFindObjects, err)
	}
	if len(ks) == 0 {
		return &DeviceError{Device: p.dev.name, Partition: p.cfg.Name, Op: opFindObjects, Class: ClassBusy, Err: fmt.Errorf("key %q is gone", op.Label)}
	}
	if !bytes.Equal(ks[0].kcv, op.PubDER) {
		return &DeviceError{Device: p.dev.name, Partition: p.cfg.Name, Op: opFindObjects, Class: ClassBusy, Err: fmt.Errorf("key %q changed its check value", op.Label)}
	}
	st.keysMu.Lock()
	st.secrets[op.Label] = ks[0]
	st.keysMu.Unlock()
	return nil
}

// secretKeys is a snapshot of partition pi's secret keys by label; nil when the partition is not open.
func (d *device) secretKeys(pi int) map[string]*secretObject {
	st := d.parts[pi].st.Load()
	if st == nil {
		return nil
	}
	st.keysMu.RLock()
	defer st.keysMu.RUnlock()
	out := make(map[string]*secretObject, len(st.secrets))
	for l, k := range st.secrets {
		out[l] = k
	}
	return out
}
