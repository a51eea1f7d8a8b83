package timeline

import (
	"math"
	"math/rand/v2"
	"time"
)

// t0 is the synthetic runs' start: fixed, so that every picture is the same from run to run.
var t0 = time.Date(2025, 1, 2, 15, 4, 5, 0, time.UTC)

var local4 = map[string]bool{"eastus-1": true, "eastus-2": true, "westus-1": false, "westus-2": false}

// failoverRun is a demo-like run at rate calls/s for 12 s: eastus-1 killed at 3 s (a few calls fail or
// wait for one attempt deadline), eastus-2 paused at 6 s (DR serves, 20 ms away), both back at 9 s.
func failoverRun(rate float64) Run {
	rng := rand.New(rand.NewPCG(1, 2))
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	lognorm := func(median time.Duration) time.Duration {
		return time.Duration(float64(median) * math.Exp(0.35*rng.NormFloat64()))
	}
	run := Run{
		Title: "synthetic failover",
		Local: local4,
		Markers: []Marker{
			{At: at(3), Label: "kill eastus-1"},
			{At: at(6), Label: "pause eastus-2"},
			{At: at(9), Label: "resume eastus-2, restart eastus-1"},
		},
		Bands: []Band{
			{From: at(3), To: at(9), Label: "eastus-1 down"},
			{From: at(6), To: at(9), Label: "local region out"},
		},
	}
	n := int(12 * rate)
	for i := range n {
		s := float64(i) / rate
		smp := Sample{Start: at(s)}
		switch {
		case s < 3 || s >= 9.3:
			smp.Device = []string{"eastus-1", "eastus-2"}[rng.IntN(2)]
			smp.Latency = lognorm(2 * time.Millisecond)
		case s < 3.2 && rng.IntN(3) == 0:
			smp.Err, smp.Latency = true, lognorm(time.Millisecond)
		case s < 6:
			smp.Device, smp.Latency = "eastus-2", lognorm(2*time.Millisecond)
			if s < 3.5 && rng.IntN(2) == 0 {
				smp.Latency += 50 * time.Millisecond // one attempt deadline lost on eastus-1
			}
		case s < 9.3:
			smp.Device = []string{"westus-1", "westus-2"}[rng.IntN(2)]
			smp.Latency = 40*time.Millisecond + lognorm(2*time.Millisecond)
			if s < 6.3 {
				smp.Latency += 50 * time.Millisecond
			}
		}
		run.Samples = append(run.Samples, smp)
	}
	return run
}
