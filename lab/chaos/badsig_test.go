package chaos

// badSignatureScenario: eastus-1 returns corrupted signatures (the relay flips a bit in every C_Sign reply,
// as a faulty RSA-CRT computation would corrupt them) while its decryptions stay correct. With
// verify_signatures: all (the load signs with ECDSA too), no invalid signature reaches a caller (the shared
// invariant), the first bad one takes eastus-1 out at once (only the calls already in flight there and the
// breaker's half-open trials meet it again), and eastus-1 is back in rotation once healed.
func badSignatureScenario() scenario {
	verifyAll := policy{name: "fast+verify-all", yaml: fastPolicy.yaml + "\nverify_signatures: all"}
	return scenario{
		name: "bad-signatures", policy: verifyAll, p99: p99Local, recovery: afterRepeatOffences, singleDevice: true,
		run: func(e *env) {
			d := e.dev("eastus-1")
			e.inject("eastus-1 signs wrong", false, []string{"eastus-1"}, func() error { return d.CorruptSignatures(true) })
			e.hold(e.tm.fault)
			e.remove("eastus-1 healed", func() error { return d.CorruptSignatures(false) })
			e.recoverDevice("eastus-1")
		},
		check: func(e *env, _ []Op, _ Summary) {
			bad := e.counter("pkcs11ha_bad_signatures_total", "eastus-1")
			// The calls already in flight on eastus-1 when its first bad signature came back (at most one per
			// worker), then at most half_open_max trial calls each time its breaker lets it try again.
			p := &e.cfg.Policy
			most := e.tm.workers + int(e.tm.fault/p.Breaker.OpenBase.D())*int(p.Breaker.HalfOpenMax)
			e.logf("bad signatures from eastus-1: %.0f (at most %d: the calls in flight at the first, then the half-open trials)", bad, most)
			if bad < 1 {
				e.t.Errorf("no bad signature was caught: the fault did not happen")
			}
			if int(bad) > most {
				e.t.Errorf("INVARIANT %0.f bad signatures from eastus-1, want at most %d: a device that returned one must be out at once", bad, most)
			}
		},
	}
}

// counter is the sum of a counter family's series whose labels include all of want.
func (e *env) counter(name string, want ...string) float64 {
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Errorf("metrics: %v", err)
		return 0
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, w := range want {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetValue() == w
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
