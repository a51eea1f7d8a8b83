package kmsdoor

import (
	"testing"

	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// TestMain fails the binary on leaked goroutines (see package leakcheck).
func TestMain(m *testing.M) { leakcheck.Main(m) }
