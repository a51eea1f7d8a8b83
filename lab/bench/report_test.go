package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// sampleReport is a report with every section filled in with made-up figures.
func sampleReport() *Report {
	o := Options{}.withDefaults()
	slices := func(ops ...int64) []Slice {
		var out []Slice
		for _, n := range ops {
			out = append(out, Slice{Ops: n, Seconds: 0.5})
		}
		return out
	}
	res := func(ops ...int64) Result {
		r := Result{Slices: slices(ops...), P50: 120 * time.Microsecond, P99: 230 * time.Microsecond, UserPerOp: 100 * time.Microsecond, SysPerOp: 27 * time.Microsecond, Seconds: 3}
		for _, n := range ops {
			r.Ops += n
		}
		return r
	}
	ha2 := res(4400, 4600, 4500)
	ha2.Devices = map[string]int64{"local-1": 6000, "local-2": 7500}
	rep := &Report{
		Machine: "test machine", Started: time.Date(2026, 11, 27, 3, 57, 0, 0, time.UTC), Elapsed: 4 * time.Minute,
		Options: o, LoadBeg: 0.55, LoadEnd: 3.8,
		Routing: &RoutingResult{NsPerOp: 43.9, N: 1000000, Load: loadRange{0.5, 0.7}},
		Inproc: []*InprocCell{{Alg: ECP256, Goroutines: 8, Load: loadRange{1, 2}, Results: map[string]Result{
			labDirect: res(5000, 5100, 4900), labC11: res(4300, 4200, 4400), labHA1: res(3800, 3700, 3750), labHA2: ha2,
		}}},
		Healthy: []*HealthyCell{{Goroutines: 1, Load: loadRange{0.4, 0.4},
			HA:     []latencySummary{{OpsPerSec: 1850, P50: 540 * time.Microsecond, P99: 900 * time.Microsecond}},
			Direct: []Result{res(900, 950)}, DRShare: []float64{0}}},
		Loss: []LossTrial{
			{Mode: "kill", FirstSuccess: 122 * time.Millisecond, FirstDev: "westus-1", Slowest: 130 * time.Millisecond, DRp50: 126 * time.Millisecond, Load: 1.5},
			{Mode: "partition", FirstSuccess: 225 * time.Millisecond, FirstDev: "westus-2", Slowest: 230 * time.Millisecond, DRp50: 127 * time.Millisecond, Load: 1.6},
		},
	}
	rep.Frontend = &FrontendRun{
		Cells: []*InprocCell{
			{Alg: ECP256, Goroutines: 1, Load: loadRange{3, 4}, Results: map[string]Result{labFront: res(400, 420), labP11Kit: res(500, 500)}},
			{Alg: ECP256, Goroutines: 8, Load: loadRange{3, 4}, Results: map[string]Result{labFront: res(900, 1000, 950), labP11Kit: res(1000, 1000, 1000)}},
		},
		SidecarCPU: map[int]time.Duration{1: 310 * time.Microsecond, 8: 250 * time.Microsecond},
		DeviceCPU: map[string]map[int]time.Duration{labFront: {1: 200 * time.Microsecond, 8: 180 * time.Microsecond},
			labP11Kit: {1: 190 * time.Microsecond, 8: 170 * time.Microsecond}},
	}
	rep.Upgrade = &UpgradeRun{Goroutines: 8, Calls: 5000, Load: loadRange{4, 5},
		During:    Latencies{int64(4 * time.Millisecond), int64(9 * time.Millisecond), int64(31 * time.Millisecond)},
		Outside:   Latencies{int64(3 * time.Millisecond), int64(5 * time.Millisecond)},
		Handovers: []Handover{{Serving: 90 * time.Millisecond, OldGone: 110 * time.Millisecond, Connections: 4 * time.Millisecond}}}
	for _, mode := range slowModes {
		for _, hedge := range []bool{false, true} {
			c := SlowCell{Mode: mode, Hedge: hedge, Sum: latencySummary{OpsPerSec: 2000, P50: time.Millisecond, P99: 15 * time.Millisecond, Max: 34 * time.Millisecond},
				P999: 32 * time.Millisecond, E1Share: 0.01, Load: loadRange{2, 3}}
			if hedge {
				c.Sum.P99, c.P999, c.Sum.Max, c.Extra, c.Hedges = 3*time.Millisecond, 13*time.Millisecond, 18*time.Millisecond, 0.014, 0.02
			}
			rep.Slow = append(rep.Slow, c)
		}
	}
	return rep
}

// TestReportWrite: every section is written, the targets are judged from the figures and the last line
// is the BENCH summary.
func TestReportWrite(t *testing.T) {
	var b bytes.Buffer
	sampleReport().write(&b)
	out := b.String()
	for _, want := range []string{
		"machine: test machine",
		"[routing] failover.Router.Pick",
		"[in-process] SoftHSM 2.6.1",
		"pkcs11ha, 2 devices (44/56)",
		"[p11-kit] four devices",
		"whole local region lost under load",
		"one slow local device",
		"routing decision < 2µs and 0 allocs/op: 43.9 ns/op, 0 allocs/op  met",
		"healthy local pair: DR share 0%: met",
		"onset 5.00x met",
		"spells 5.00x met",
		"[front end] ECDSA P-256",
		"(a) front end, local pair",
		"250µs",
		"557µs", // total CPU of (a) at 8 goroutines: client 127 + sidecar 250 + devices 180
		"frontend_vs_p11kit >= 0.85  (ECDSA P-256, 8 goroutines, through p11-kit-client.so, device workers): 0.950  met",
		"frontend_p50_vs_p11kit <= 1.6  (ECDSA P-256, 1 goroutine, device workers): 1.00  met",
		"[upgrade] ECDSA P-256",
		"during a handover      3  9.00ms  31.0ms  31.0ms",
		"failed calls: 0 of 5000 (0 during a handover)",
		"new process serving 90.0ms / 90.0ms after the signal, old process gone 110ms / 110ms",
		"hot upgrade: 0 failed calls (1 upgrades, 5000 calls): 0  met",
	} {
		assert.Contains(t, out, want)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	assert.Equal(t, "BENCH ha_vs_direct=0.760 ha_vs_crypto11=0.881 frontend_vs_p11kit=0.950 frontend_p50_vs_p11kit=1.00", lines[len(lines)-1])

	// the front-end section alone still ends with its BENCH figure
	rep := sampleReport()
	rep.Inproc = nil
	b.Reset()
	rep.write(&b)
	lines = strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	assert.Equal(t, "BENCH frontend_vs_p11kit=0.950 frontend_p50_vs_p11kit=1.00", lines[len(lines)-1])
}
