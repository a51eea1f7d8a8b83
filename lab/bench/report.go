package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func okStr(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// write writes the report: a header, one section per part that ran, then the targets and the BENCH line.
func (rep *Report) write(w io.Writer) {
	fmt.Fprintf(w, "\nhsm-bench: what the HA layer costs and what it buys, one run on one machine\n")
	fmt.Fprintf(w, "machine: %s\n", rep.Machine)
	fmt.Fprintf(w, "run:     %s, %v; 1-min load average %.2f at start, %.2f at end\n",
		rep.Started.Format("2006-01-02 15:04 MST"), rep.Elapsed.Round(time.Second), rep.LoadBeg, rep.LoadEnd)
	if r := rep.Routing; r != nil {
		fmt.Fprintf(w, "\n[routing] failover.Router.Pick, 4 members (2 local, 2 DR), testing.Benchmark, median of 3\n")
		fmt.Fprintf(w, "  %.1f ns/op  %d allocs/op  %d B/op   (%d iterations; load %s)\n", r.NsPerOp, r.AllocsPerOp, r.BytesPerOp, r.N, r.Load)
	}
	if len(rep.Inproc) > 0 {
		rep.writeInproc(w)
	}
	if len(rep.Healthy) > 0 {
		rep.writeHealthy(w)
	}
	if len(rep.Loss) > 0 {
		rep.writeLoss(w)
	}
	var hedgeOK []string
	if len(rep.Slow) > 0 {
		hedgeOK = rep.writeSlow(w)
	}
	if rep.Frontend != nil {
		rep.writeFrontend(w)
	}
	if rep.Upgrade != nil {
		rep.writeUpgrade(w)
	}
	rep.writeTargets(w, hedgeOK)
}

// writeInproc writes the in-process table: every contender of every cell, with its ratios.
func (rep *Report) writeInproc(w io.Writer) {
	o := rep.Options
	fmt.Fprintf(w, "\n[in-process] SoftHSM 2.6.1 in-process, same token for every contender, each contender in a child process of its own;\n")
	fmt.Fprintf(w, "  closed loop; per cell and contender %v measured after %v warm-up, in %d slices of %v: the contenders take turns\n", o.Cell, o.Warmup, o.Rounds, o.Cell/time.Duration(o.Rounds))
	fmt.Fprintf(w, "  slice by slice (order rotating), so load changes hit all alike. ops/s, p50, p99 over all slices; vs = median of the\n")
	fmt.Fprintf(w, "  per-turn ratios of ops/s; spread = (max-min)/median of slice ops/s; CPU/op = user+system CPU time of the\n")
	fmt.Fprintf(w, "  contender's process per signature; errors = failed signatures\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  algorithm\tgor\tcontender\tops/s\tspread\tp50\tp99\tCPU/op\terrors\tvs direct\tvs crypto11\tload\t\n")
	for _, c := range rep.Inproc {
		for i, lab := range contenderOrder {
			if _, ok := c.Results[lab]; ok {
				c.writeRow(tw, lab, i == 0)
			}
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "  (direct = C_SignInit + C_Sign only, raw r||s for ECDSA; crypto11 and pkcs11ha return DER. pkcs11ha calls Key.SignContext (WithOutcome names the device)\n")
	fmt.Fprintf(w, "   with a %v caller deadline, exactly what Key.Sign does. 2 devices: two copies of libsofthsm2.so, share of ops in brackets.\n", 2*time.Second)
	fmt.Fprintf(w, "   pkcs11ha rows verify RSA signatures (policy.verify_signatures: rsa, the default) and not ECDSA ones; the verify rows flip that)\n")
	if slices.ContainsFunc(rep.Inproc, func(c *InprocCell) bool { return isSecretAlg(c.Alg) }) {
		fmt.Fprintf(w, "  (secret-key rows, 32-byte inputs: direct = C_EncryptInit(CKM_AES_GCM, a fresh nonce) + C_Encrypt, C_DecryptInit + C_Decrypt,\n")
		fmt.Fprintf(w, "   C_SignInit(CKM_SHA256_HMAC) + C_Sign through miekg/pkcs11; pkcs11ha = SecretKey.Seal / Open / MAC, one C_Encrypt/C_Decrypt/C_Sign each)\n")
	}
	rep.writeVerifyCost(w)
}

// writeVerifyCost sums up what verify-after-sign costs per cell: the 1-device pkcs11ha row with
// verification against the same without (RSA: the default row against "verify off"; ECDSA: "verify all"
// against the default row, which does not verify ECDSA).
func (rep *Report) writeVerifyCost(w io.Writer) {
	for _, c := range rep.Inproc {
		on, off := labHA1All, labHA1
		if c.Alg == RSA2048 {
			on, off = labHA1, labHA1Off
		}
		ron, okOn := c.Results[on]
		roff, okOff := c.Results[off]
		if !okOn || !okOff {
			continue
		}
		fmt.Fprintf(w, "  verify-after-sign, %s, %d gor: ops/s with/without %.3f (median per-turn ratio); CPU/signature %s vs %s (%+.1f µs); p50 %s vs %s\n",
			c.Alg, c.Goroutines, c.ratio(on, off), fmtDur(ron.UserPerOp+ron.SysPerOp), fmtDur(roff.UserPerOp+roff.SysPerOp),
			float64(ron.UserPerOp+ron.SysPerOp-roff.UserPerOp-roff.SysPerOp)/1e3, fmtDur(ron.P50), fmtDur(roff.P50))
	}
}

// writeRow writes contender lab's row of the cell; the first row of a cell also names the algorithm, the
// goroutines and the load.
func (c *InprocCell) writeRow(tw io.Writer, lab string, first bool) {
	res := c.Results[lab]
	alg, gor, load := "", "", ""
	if first {
		alg, gor, load = c.Alg, fmt.Sprint(c.Goroutines), c.Load.String()
	}
	vsD, vsC := "", ""
	if _, ok := c.Results[labDirect]; ok && lab != labDirect {
		vsD = fmt.Sprintf("%.3f", c.ratio(lab, labDirect))
	}
	if _, ok := c.Results[labC11]; ok && lab != labC11 {
		vsC = fmt.Sprintf("%.3f", c.ratio(lab, labC11))
	}
	name := lab
	if devs := res.Devices; len(devs) > 1 {
		var tot int64
		for _, v := range devs {
			tot += v
		}
		name += fmt.Sprintf(" (%.0f/%.0f)", 100*float64(devs["local-1"])/float64(tot), 100*float64(devs["local-2"])/float64(tot))
	}
	fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%.0f%%\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n", alg, gor, name, fmtRate(res.OpsPerSec()), 100*res.spread(),
		fmtDur(res.P50), fmtDur(res.P99), fmtDur(res.UserPerOp+res.SysPerOp), res.Errors, vsD, vsC, load)
}

// writeHealthy writes the p11-kit harness's healthy-pair table: pkcs11ha over four devices against direct
// calls to one local device.
func (rep *Report) writeHealthy(w io.Writer) {
	fmt.Fprintf(w, "\n[p11-kit] four devices, each a `p11-kit server` process behind a relay; DR (westus-1/2) %v one-way; closed loop, ECDSA P-256\n", drDelay)
	fmt.Fprintf(w, "  healthy local pair (pkcs11ha over all four devices, default policy) vs direct miekg/pkcs11 to eastus-1 alone; median of %d rounds x %v\n", healthyRounds, rep.Options.Cell)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  gor\tpkcs11ha ops/s\tp50\tp99\tDR share\tdirect eastus-1 ops/s\tp50\tp99\tload\t\n")
	for _, c := range rep.Healthy {
		var hops, dops []float64
		var hp50, hp99, dp50, dp99 []time.Duration
		for _, s := range c.HA {
			hops, hp50, hp99 = append(hops, s.OpsPerSec), append(hp50, s.P50), append(hp99, s.P99)
		}
		for _, r := range c.Direct {
			dops, dp50, dp99 = append(dops, r.OpsPerSec()), append(dp50, r.P50), append(dp99, r.P99)
		}
		maxDR := 0.0
		for _, x := range c.DRShare {
			maxDR = max(maxDR, x)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%.2f%%\t%s\t%s\t%s\t%s\t\n", c.Goroutines, fmtRate(median(hops)), fmtDur(medianDur(hp50)), fmtDur(medianDur(hp99)),
			100*maxDR, fmtRate(median(dops)), fmtDur(medianDur(dp50)), fmtDur(medianDur(dp99)), c.Load)
	}
	tw.Flush()
	fmt.Fprintf(w, "  (DR share: the largest over rounds; one DR signature takes ~3 round trips = ~%v)\n", 6*drDelay)
}

// writeLoss writes one row per region-loss trial.
func (rep *Report) writeLoss(w io.Writer) {
	fmt.Fprintf(w, "\n  whole local region lost under load (4 goroutines, default policy, fresh cluster per trial):\n")
	fmt.Fprintf(w, "    kill = both local servers SIGKILLed (calls fail fast); partition = both relays hang (calls time out at attempt_timeout.local 50ms)\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "    mode\ttrial\tfirst success after\tserved by\tcaller errors\tslowest call across the loss\tDR p50 after\tload\t\n")
	n := map[string]int{}
	for _, t := range rep.Loss {
		n[t.Mode]++
		fmt.Fprintf(tw, "    %s\t%d\t%s\t%s\t%d\t%s\t%s\t%.2f\t\n", t.Mode, n[t.Mode], fmtDur(t.FirstSuccess), t.FirstDev, t.Errors, fmtDur(t.Slowest), fmtDur(t.DRp50), t.Load)
	}
	tw.Flush()
}

// writeSlow writes the slow-device table (each mode without, then with hedging) and returns the verdict
// on the hedging target per mode.
func (rep *Report) writeSlow(w io.Writer) (hedgeOK []string) {
	o := rep.Options
	fmt.Fprintf(w, "\n  one slow local device (eastus-1 relay +%v each way, ~%v per signature), 4 goroutines, %v measured after a healthy warm-up:\n", slowOneWay, 6*slowOneWay, o.Cell)
	fmt.Fprintf(w, "    onset = turns slow as the window starts and stays slow; steady = slow since %v before the window;\n", steadyAfter)
	fmt.Fprintf(w, "    spells = slow %v at a time, every %v on average; flicker = slow %v at a time, every %v on average\n",
		spellLength, spellEvery, flickLength, flickEvery)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "    mode\thedge\tops/s\tp50\tp99\tp99.9\tmax\teastus-1 share\thedged\textra attempts\tp99 cut\tp99.9 cut\tload\t\n")
	for _, mode := range slowModes {
		var off *slowRow
		for _, hedge := range []bool{false, true} {
			row := rep.slowRow(mode, hedge)
			if row == nil {
				continue
			}
			cut, cut9 := "", ""
			if !hedge {
				off = row
			} else if off != nil && row.p99 > 0 && off.p99 > 0 {
				x := float64(off.p99) / float64(row.p99)
				cut = fmt.Sprintf("%.2fx", x)
				cut9 = fmt.Sprintf("%.2fx", float64(off.p999)/float64(row.p999))
				hedgeOK = append(hedgeOK, fmt.Sprintf("%s %.2fx %s", mode, x, okStr(x >= 5 && row.extra <= 0.05)))
			}
			onoff := "off"
			if hedge {
				onoff = "on"
			}
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f%%\t%.2f%%\t%.2f%%\t%s\t%s\t%s\t\n", mode, onoff, fmtRate(row.ops), fmtDur(row.p50),
				fmtDur(row.p99), fmtDur(row.p999), fmtDur(row.max), 100*row.e1, 100*row.hedged, 100*row.extra, cut, cut9, row.load)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "    (median of %d runs per row (steady: 1); hedged and extra attempts from pkcs11ha's own counters: hedges_total and attempts_total\n", o.P11Rounds)
	fmt.Fprintf(w, "     over operations_total; p99 cut = p99 without hedging / p99 with)\n")
	return hedgeOK
}

// slowRow is one row of the slow-device table: medians over the runs of one mode with or without hedging.
type slowRow struct {
	ops, e1, hedged, extra float64
	p50, p99, p999, max    time.Duration
	load                   loadRange
}

// slowRow returns the medians of the slow-device cells of (mode, hedge), or nil when there is none.
func (rep *Report) slowRow(mode string, hedge bool) *slowRow {
	var ops, e1, hd, ex []float64
	var p50, p99, p999, mx []time.Duration
	var ld loadRange
	for _, c := range rep.Slow {
		if c.Mode != mode || c.Hedge != hedge {
			continue
		}
		ops, e1, hd, ex = append(ops, c.Sum.OpsPerSec), append(e1, c.E1Share), append(hd, c.Hedges), append(ex, c.Extra)
		p50, p99, p999, mx = append(p50, c.Sum.P50), append(p99, c.Sum.P99), append(p999, c.P999), append(mx, c.Sum.Max)
		ld.add(c.Load.lo)
		ld.add(c.Load.hi)
	}
	if len(ops) == 0 {
		return nil
	}
	return &slowRow{ops: median(ops), e1: median(e1), hedged: median(hd), extra: median(ex),
		p50: medianDur(p50), p99: medianDur(p99), p999: medianDur(p999), max: medianDur(mx), load: ld}
}

// writeTargets judges the figures against the project's targets and ends with the BENCH summary line.
func (rep *Report) writeTargets(w io.Writer, hedgeOK []string) {
	fmt.Fprintf(w, "\ntargets:\n")
	var ec8 *InprocCell
	for _, c := range rep.Inproc {
		if c.Alg == ECP256 && c.Goroutines == 8 {
			ec8 = c
		}
	}
	vsDirect, vsC11 := math.NaN(), math.NaN()
	if ec8 != nil {
		vsDirect, vsC11 = ec8.ratio(labHA1, labDirect), ec8.ratio(labHA1, labC11)
		fmt.Fprintf(w, "  ha_vs_direct   >= 0.97  (ECDSA P-256, 8 goroutines, 1 device): %.3f  %s\n", vsDirect, okStr(vsDirect >= 0.97))
		fmt.Fprintf(w, "  ha_vs_crypto11 >= 1.00  (ECDSA P-256, 8 goroutines, 1 device): %.3f  %s\n", vsC11, okStr(vsC11 >= 1.0))
	}
	for _, c := range rep.Inproc {
		if c.Alg != ECP256 || c.Goroutines != 1 {
			continue
		}
		for _, lab := range []string{labHA1, labHA1Inline} {
			if _, ok := c.Results[lab]; ok {
				x := c.ratio(lab, labDirect)
				fmt.Fprintf(w, "  %-33s >= 0.80  (ECDSA P-256, 1 goroutine vs direct): %.3f  %s\n", lab, x, okStr(x >= 0.8))
			}
		}
	}
	if rep.Routing != nil {
		fmt.Fprintf(w, "  routing decision < 2µs and 0 allocs/op: %.1f ns/op, %d allocs/op  %s\n", rep.Routing.NsPerOp, rep.Routing.AllocsPerOp, okStr(rep.Routing.ok()))
	}
	if len(rep.Healthy) > 0 {
		ok := true
		for _, c := range rep.Healthy {
			for _, x := range c.DRShare {
				ok = ok && x == 0
			}
		}
		fmt.Fprintf(w, "  healthy local pair: DR share 0%%: %s\n", okStr(ok))
	}
	if len(hedgeOK) > 0 {
		fmt.Fprintf(w, "  hedging cuts p99 under one slow local device >= 5x for <= 5%% extra attempts: %s\n", strings.Join(hedgeOK, ", "))
	}
	var bench []string
	if ec8 != nil {
		bench = append(bench, fmt.Sprintf("ha_vs_direct=%.3f ha_vs_crypto11=%.3f", vsDirect, vsC11))
	}
	if fc := rep.Frontend.cell(8); fc != nil {
		x := fc.ratio(labFront, labP11Kit)
		fmt.Fprintf(w, "  frontend_vs_p11kit >= 0.85  (ECDSA P-256, 8 goroutines, through p11-kit-client.so, device workers): %.3f  %s\n", x, okStr(x >= 0.85))
		bench = append(bench, fmt.Sprintf("frontend_vs_p11kit=%.3f", x))
	}
	if fc := rep.Frontend.cell(1); fc != nil {
		x := float64(fc.Results[labFront].P50) / float64(fc.Results[labP11Kit].P50)
		fmt.Fprintf(w, "  frontend_p50_vs_p11kit <= 1.6  (ECDSA P-256, 1 goroutine, device workers): %.2f  %s\n", x, okStr(x <= 1.6))
		bench = append(bench, fmt.Sprintf("frontend_p50_vs_p11kit=%.2f", x))
	}
	if u := rep.Upgrade; u != nil {
		fmt.Fprintf(w, "  hot upgrade: 0 failed calls (%d upgrades, %d calls): %d  %s\n", len(u.Handovers), u.Calls, u.Failed, okStr(u.Failed == 0))
	}
	if len(bench) > 0 {
		fmt.Fprintf(w, "BENCH %s\n", strings.Join(bench, " "))
	}
}

// writeFrontend writes the front-end table: (a) and (b) at each concurrency, with (a)/(b).
func (rep *Report) writeFrontend(w io.Writer) {
	o := rep.Options
	fmt.Fprintf(w, "\n[front end] ECDSA P-256: a Go client (miekg/pkcs11, a session per goroutine, C_SignInit + C_Sign) through the stock\n")
	fmt.Fprintf(w, "  p11-kit-client.so, in a child process, against (a) `hsm-ha-proxy serve` (server.pkcs11, log level info: an access log line\n")
	fmt.Fprintf(w, "  per signature, to a file) with a cluster over the local pair eastus-1/-2, and (b) eastus-1's own `p11-kit server`. Both\n")
	fmt.Fprintf(w, "  reach the devices on their servers' own sockets (no test relay). %v per cell and contender after %v warm-up, in %d slices\n", o.Cell, o.Warmup, o.Rounds)
	fmt.Fprintf(w, "  taken in turn (order rotating); (a)/(b) = median of the per-turn ratios of ops/s. CPU per signature (user+system) over\n")
	fmt.Fprintf(w, "  the contender's own turns: of the client process, of the sidecar (its device workers and health checks included), of the devices' `p11-kit\n")
	fmt.Fprintf(w, "  server` process groups (the p11-kit-remote serving each connection, SoftHSM in it), and their sum\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  gor\tcontender\tops/s\tspread\tp50\tp99\tclient CPU\tsidecar CPU\tdevice CPU\ttotal CPU\terrors\t(a)/(b)\tload\t\n")
	for _, c := range rep.Frontend.Cells {
		for i, lab := range []string{labFront, labP11Kit} {
			res, ok := c.Results[lab]
			if !ok {
				continue
			}
			gor, load, ratio, side := "", "", "", ""
			client, dev := res.UserPerOp+res.SysPerOp, rep.Frontend.DeviceCPU[lab][c.Goroutines]
			total := client + dev
			if i == 0 {
				gor, load = fmt.Sprint(c.Goroutines), c.Load.String()
				ratio = fmt.Sprintf("%.3f", c.ratio(labFront, labP11Kit))
				side = fmtDur(rep.Frontend.SidecarCPU[c.Goroutines])
				total += rep.Frontend.SidecarCPU[c.Goroutines]
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%.0f%%\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t\n", gor, lab, fmtRate(res.OpsPerSec()), 100*res.spread(),
				fmtDur(res.P50), fmtDur(res.P99), fmtDur(client), side, fmtDur(dev), fmtDur(total), res.Errors, ratio, load)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "  (a signature is 3 client round trips (C_SignInit, C_Sign for the length, C_Sign) in both; through the front end each\n")
	fmt.Fprintf(w, "   C_Sign with a buffer adds a hop to the device's worker process and the device round trips there (C_SignInit, then\n")
	fmt.Fprintf(w, "   one C_Sign into a buffer sized from the key) over the same p11-kit RPC)\n")
	if rep.Frontend.Profile != "" {
		fmt.Fprintf(w, "  sidecar CPU profile: %s\n", rep.Frontend.Profile)
	}
}

// cell returns the front-end cell at goroutines g, or nil (also on a nil run).
func (fr *FrontendRun) cell(g int) *InprocCell {
	if fr == nil {
		return nil
	}
	for _, c := range fr.Cells {
		if c.Goroutines == g {
			return c
		}
	}
	return nil
}

// writeUpgrade writes the upgrade section: the calls during handovers, and the handovers' durations.
func (rep *Report) writeUpgrade(w io.Writer) {
	u := rep.Upgrade
	if len(u.Handovers) == 0 {
		return
	}
	fmt.Fprintf(w, "\n[upgrade] ECDSA P-256: a Go client (miekg/pkcs11 through the stock p11-kit-client.so, a session per goroutine,\n")
	fmt.Fprintf(w, "  %d goroutines, in a child process) signs in a closed loop through the front end while the sidecar (local pair,\n", u.Goroutines)
	fmt.Fprintf(w, "  device workers) is upgraded in place %d times (SIGUSR2 to the pid in server.pid_file, the same binary). A handover\n", len(u.Handovers))
	fmt.Fprintf(w, "  lasts from the signal until the old process is gone; a call that overlaps one is \"during\" it\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  calls\tcount\tp50\tp99\tmax\t\n")
	for _, r := range []struct {
		name string
		l    Latencies
	}{{"during a handover", u.During}, {"outside", u.Outside}} {
		top := time.Duration(0)
		if len(r.l) > 0 {
			top = time.Duration(slices.Max(r.l))
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t\n", r.name, len(r.l), fmtDur(r.l.Quantile(0.5)), fmtDur(r.l.Quantile(0.99)), fmtDur(top))
	}
	tw.Flush()
	fmt.Fprintf(w, "  failed calls: %d of %d (%d during a handover)", u.Failed, u.Calls, u.FailedDuring)
	if u.FirstErr != "" {
		fmt.Fprintf(w, " (first: %s)", u.FirstErr)
	}
	fmt.Fprintf(w, "; load %s\n", u.Load)
	var serving, gone, conns []time.Duration
	for _, h := range u.Handovers {
		serving, gone = append(serving, h.Serving), append(gone, h.OldGone)
		if h.Connections > 0 {
			conns = append(conns, h.Connections)
		}
	}
	fmt.Fprintf(w, "  handover, median / max: new process serving %s / %s after the signal, old process gone %s / %s;\n",
		fmtDur(medianDur(serving)), fmtDur(slices.Max(serving)), fmtDur(medianDur(gone)), fmtDur(slices.Max(gone)))
	if len(conns) > 0 {
		fmt.Fprintf(w, "  the connections' own handover (handover_ms in the old process's log) %s / %s\n", fmtDur(medianDur(conns)), fmtDur(slices.Max(conns)))
	}
}
