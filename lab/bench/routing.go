package bench

import (
	"errors"
	"testing"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
)

// RoutingResult is the routing decision (failover.Router.Pick) measured with testing.Benchmark.
type RoutingResult struct {
	NsPerOp     float64
	AllocsPerOp int64
	BytesPerOp  int64
	N           int
	Load        loadRange
}

// benchPick measures Router.Pick over four members (two local, two DR, default config), as
// failover's BenchmarkPick does: the routing decision alone, healthy members, nothing in flight.
func benchPick(rounds int) (RoutingResult, error) {
	members := []failover.MemberConfig{
		{Name: "eastus-1", Tier: 0, Capacity: 16},
		{Name: "eastus-2", Tier: 0, Capacity: 16},
		{Name: "westus-1", Tier: 1, Capacity: 16},
		{Name: "westus-2", Tier: 1, Capacity: 16},
	}
	r, err := failover.New(failover.DefaultConfig(), members)
	if err != nil {
		return RoutingResult{}, err
	}
	defer r.Close()
	var ns []float64
	var out RoutingResult
	for range max(rounds, 1) {
		out.Load.add(loadAvg())
		var fail error
		br := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := r.Pick(failover.AllMembers, 0); !ok {
					fail = errors.New("failover.Router.Pick found no member")
					b.FailNow()
				}
			}
		})
		if fail != nil {
			return RoutingResult{}, fail
		}
		ns = append(ns, float64(br.T)/float64(max(br.N, 1)))
		out.AllocsPerOp = max(out.AllocsPerOp, br.AllocsPerOp())
		out.BytesPerOp = max(out.BytesPerOp, br.AllocedBytesPerOp())
		out.N += br.N
	}
	out.NsPerOp = median(ns)
	out.Load.add(loadAvg())
	return out, nil
}

func (r RoutingResult) ok() bool {
	return r.NsPerOp < float64(2*time.Microsecond/time.Nanosecond) && r.AllocsPerOp == 0
}
