package chaos

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Goroutines are checked after every scenario and once more for the whole binary, ignoring nothing but the
// one case the design documents (DESIGN.md, "A call may never return even though its device process is
// gone"): p11-kit-client 0.24 can leave calls blocked for good when its server is SIGKILLed with several
// calls in flight on one instance, even after the connection is closed. The library cannot release them;
// it abandons them at their deadline, retires the instance and reports them (Status: Abandoned on a device
// with RetiredInstances > 0). Exactly that many goroutines blocked in a miekg/pkcs11 cgo call are tolerated,
// and no more: anything else still running after a scenario is a leak.

// stuckAllowance is how many such calls the library reported over the whole run.
var stuckAllowance atomic.Int64

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := verifyNoLeaks(int(stuckAllowance.Load())); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// verifyNoLeaks fails if goroutines other than allowed ones blocked in a miekg/pkcs11 cgo call are left
// (beyond those the options ignore).
func verifyNoLeaks(allowed int, opts ...goleak.Option) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, tops := cgoBlocked()
		if n <= allowed {
			for _, f := range tops {
				opts = append(opts, goleak.IgnoreTopFunction(f))
			}
			return goleak.Find(opts...)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d goroutines are blocked in PKCS#11 calls, but the library reported only %d abandoned calls on retired module instances: %v",
				n, allowed, goleak.Find(opts...))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgoBlocked counts the goroutines whose top frame is a miekg/pkcs11 cgo call, and names those frames.
func cgoBlocked() (int, []string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	var tops []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.SplitN(g, "\n", 3)
		if len(lines) < 2 {
			continue
		}
		fn := lines[1]
		if i := strings.LastIndexByte(fn, '('); i > 0 {
			fn = fn[:i]
		}
		if strings.HasPrefix(fn, "github.com/miekg/pkcs11._Cfunc_") {
			count++
			if !slices.Contains(tops, fn) {
				tops = append(tops, fn)
			}
		}
	}
	return count, tops
}
