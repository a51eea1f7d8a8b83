package p11rpc

import (
	"runtime"
	"testing"
)

// allocated is the number of bytes f allocates, averaged over runs: TotalAlloc counts the whole process,
// so one run would also count whatever the test runtime allocates meanwhile.
func allocated(f func()) uint64 {
	const runs = 50
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

// TestParseRequestAllocationBound: the worst bodies (as many of the smallest elements as fit) cost a
// bounded multiple of their size, whatever counts they announce.
func TestParseRequestAllocationBound(t *testing.T) {
	const n = 1 << 16
	invalidAttrs := request(CallFindObjectsInit).u64(1).u32(n)
	for i := 0; i < n; i++ {
		invalidAttrs = invalidAttrs.u32(ckaLabel).y(0)
	}
	bufs := request(CallGetAttributeValue).u64(1).u64(2).u32(n)
	for i := 0; i < n; i++ {
		bufs = bufs.u32(ckaLabel).u32(0)
	}
	tests := []struct {
		name    string
		body    msg
		version byte
	}{
		{"attributes", invalidAttrs, 0},
		{"attribute buffers, both dialects tried", append(bufs, 0), 1},
		{"announced counts that do not fit", request(CallFindObjectsInit).u64(1).u32(0xffffffff), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := allocated(func() { _, _ = ParseRequest(tc.body, tc.version) })
			if limit := uint64(maxAllocFactor*len(tc.body) + 4096); got > limit {
				t.Fatalf("%d bytes allocated for a %d-byte body (limit %d)", got, len(tc.body), limit)
			}
			t.Logf("%d bytes allocated for a %d-byte body", got, len(tc.body))
		})
	}
}
