package pkcs11ha

import "context"

var _ backend = (*device)(nil)

func (d *device) probe(ctx context.Context, othersServing bool) error {
	return d.probeTokens(ctx, othersServing)
}

func (d *device) run(ctx context.Context, pi int, op *deviceOp) ([]byte, error) {
	return d.parts[pi].run(ctx, op)
}

func (d *device) keys(pi int) map[string]*keyObject {
	st := d.parts[pi].st.Load()
	if st == nil {
		return nil
	}
	st.keysMu.RLock()
	defer st.keysMu.RUnlock()
	out := make(map[string]*keyObject, len(st.keys))
	for l, k := range st.keys {
		out[l] = k
	}
	return out
}

func (d *device) partition(pi int) partInfo {
	p := d.parts[pi]
	pi2 := partInfo{Open: p.st.Load() != nil, Logins: p.logins.Load(), PINHash: pinHash(p.secret())}
	if why := p.credFatal.Load(); why != nil {
		pi2.Open, pi2.CredFatal = false, *why
	}
	return pi2
}

func (d *device) counts() backendCounts {
	c := backendCounts{Reinits: d.reinitCount(), Retired: d.retiredCount(), Stuck: d.stuck.Load(), LastErr: d.lastErr.Load()}
	if why := d.capRefusal.Load(); why != nil {
		c.CapRefusal = *why
	}
	return c
}

func (d *device) shares(o backend) bool {
	od, ok := o.(*device)
	return ok && od != d && od.mod == d.mod
}

func (d *device) setHooks(keysChanged func(), down func(reason string)) {
	if keysChanged != nil {
		d.onKeys = func(*device) { keysChanged() }
	} else {
		d.onKeys = nil
	}
	d.onDown = down
}

func (d *device) noteError(err error) { d.setErr(err) }
