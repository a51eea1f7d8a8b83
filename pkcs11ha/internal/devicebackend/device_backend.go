package devicebackend

import "context"

var _ Backend = (*Device)(nil)

func (d *Device) Probe(ctx context.Context, othersServing bool) error {
	return d.probeTokens(ctx, othersServing)
}

func (d *Device) Run(ctx context.Context, pi int, op *Op) ([]byte, error) {
	return d.Parts[pi].run(ctx, op)
}

func (d *Device) Keys(pi int) map[string]*KeyObject {
	st := d.Parts[pi].St.Load()
	if st == nil {
		return nil
	}
	st.keysMu.RLock()
	defer st.keysMu.RUnlock()
	out := make(map[string]*KeyObject, len(st.keys))
	for l, k := range st.keys {
		out[l] = k
	}
	return out
}

func (d *Device) Partition(pi int) PartInfo {
	p := d.Parts[pi]
	pi2 := PartInfo{Open: p.onLiveInstance(), Logins: p.logins.Load(), PINHash: PinHash(p.secret())}
	if why := p.credFatal.Load(); why != nil {
		pi2.Open, pi2.CredFatal = false, *why
	}
	return pi2
}

func (d *Device) Counts() Counts {
	c := Counts{Reinits: d.reinitCount(), Retired: d.RetiredCount(), Stuck: d.stuck.Load(), LastErr: d.lastErr.Load()}
	c.Lanes, c.LanesOpen = d.laneCounts()
	if why := d.capRefusal.Load(); why != nil {
		c.CapRefusal = *why
	}
	return c
}

func (d *Device) Shares(o Backend) bool {
	od, ok := o.(*Device)
	return ok && od != d && od.Mod == d.Mod
}

func (d *Device) SetHooks(keysChanged func(), down func(reason string)) { d.h.set(keysChanged, down) }

func (d *Device) NoteError(err error) { d.setErr(err) }
