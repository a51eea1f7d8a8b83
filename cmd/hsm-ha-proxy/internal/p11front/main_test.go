package p11front

import (
	"testing"

	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// TestMain fails the package when a test leaves goroutines behind (servers, connections, clusters and
// their monitors are all closed in t.Cleanup), tolerating only calls the library reports stuck for good.
func TestMain(m *testing.M) { leakcheck.Main(m) }
