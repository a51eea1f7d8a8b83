package devicebackend

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestHooks(t *testing.T) {
	var keys, downs atomic.Int32
	count := func() { keys.Add(1) }
	down := func(string) { downs.Add(1) }
	for _, tc := range []struct {
		name              string
		set               bool
		keysFn            func()
		downFn            func(string)
		wantKeys, wantDns int32
	}{
		{name: "never set"},
		{name: "set to nil", set: true},
		{name: "keys only", set: true, keysFn: count, wantKeys: 1},
		{name: "both", set: true, keysFn: count, downFn: down, wantKeys: 1, wantDns: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys.Store(0)
			downs.Store(0)
			var h hooks
			if tc.set {
				h.set(tc.keysFn, tc.downFn)
			}
			h.onKeys()
			h.onDown("gone")
			assert.Equal(t, tc.wantKeys, keys.Load())
			assert.Equal(t, tc.wantDns, downs.Load())
		})
	}
}

// A lane forwards its down to its device's hook as it is when the call comes, so a SetHooks after the lanes
// were made (or racing with their calls: the race detector checks) still reaches the cluster.
func TestHooksLaneForwardsToCurrentHook(t *testing.T) {
	d := &Device{}
	ld := &Device{home: d}
	ld.h.set(nil, d.h.onDown) // as addLanes does
	var got atomic.Value
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 100 {
			ld.h.onDown("early") // before or after SetHooks: either no hook yet, or the new one
		}
	}()
	go func() {
		defer wg.Done()
		d.SetHooks(nil, func(r string) { got.Store(r) })
	}()
	wg.Wait()
	ld.h.onDown("lane down")
	assert.Equal(t, "lane down", got.Load())
}
