package leakcheck

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func parkedHere(release <-chan struct{}) { <-release }

func TestVerifyFindsALeakAndSummaryNamesIt(t *testing.T) {
	release := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); parkedHere(release) }()
	err := Verify(0)
	require.Error(t, err, "a parked goroutine is a leak")
	assert.Contains(t, err.Error(), "parkedHere")
	assert.Contains(t, Summary(), "TestVerifyFindsALeakAndSummaryNamesIt")
	close(release)
	<-done
	require.NoError(t, Verify(0))
}

func TestStuck(t *testing.T) {
	for _, tc := range []struct {
		name         string
		sts          []pkcs11ha.DeviceStatus
		stuck, other int
	}{
		{name: "none", sts: []pkcs11ha.DeviceStatus{{Name: "a"}}, stuck: 0, other: 0},
		{name: "retired instance", sts: []pkcs11ha.DeviceStatus{{Name: "a", StuckCalls: 3, RetiredInstances: 1}, {Name: "b", Abandoned: 1}}, stuck: 3, other: 1},
		{name: "both", sts: []pkcs11ha.DeviceStatus{{Name: "a", StuckCalls: 2, Abandoned: 1, RetiredInstances: 1}}, stuck: 2, other: 1},
		{name: "not retired", sts: []pkcs11ha.DeviceStatus{{Name: "a", Abandoned: 2}}, stuck: 0, other: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, o := Stuck(tc.sts)
			assert.Equal(t, tc.stuck, s)
			assert.Equal(t, tc.other, o)
		})
	}
}

func TestSettle(t *testing.T) {
	var calls atomic.Int32
	// Other calls return after a few polls: Settle waits for them and reports the stuck ones.
	got := Settle(func() (int, int) {
		if calls.Add(1) < 3 {
			return 2, 1
		}
		return 2, 0
	}, 5*time.Second)
	assert.Equal(t, 2, got)
	assert.GreaterOrEqual(t, calls.Load(), int32(3))
	// Never settling: bounded by wait (it returns at all; timers never fire early, so not before the wait).
	start := time.Now()
	assert.Equal(t, 1, Settle(func() (int, int) { return 1, 1 }, 100*time.Millisecond))
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
}

func TestTopFunc(t *testing.T) {
	g := "goroutine 7 [chan receive]:\nexample.com/p.f(0x1, 0x2)\n\t/x/p.go:3 +0x1\ncreated by example.com/p.g in goroutine 1"
	assert.Equal(t, "example.com/p.f", topFunc(g))
	assert.Equal(t, "", topFunc("goroutine 1"))
	assert.True(t, strings.HasPrefix(topFunc("goroutine 2 [running]:\nmain.main()\n"), "main.main"))
}

// TestModuleCall: a call stranded in one-call sign counts as one stranded in miekg/pkcs11 (a gate run
// failed on five such goroutines the library had reported stuck).
func TestModuleCall(t *testing.T) {
	for fn, want := range map[string]bool{
		"github.com/miekg/pkcs11._Cfunc_Sign":                                          true,
		"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/onecall._Cfunc_call_single":  true,
		"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend.(*Device).Run": false,
		"runtime.gopark": false,
	} {
		assert.Equal(t, want, moduleCall(fn), fn)
	}
}
