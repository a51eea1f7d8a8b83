package chaos

import (
	"testing"

	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// Goroutines are checked after every scenario and once more for the whole binary, ignoring nothing but the
// calls the library reports stuck for good in retired module instances (see package leakcheck).
func TestMain(m *testing.M) { leakcheck.Main(m) }
