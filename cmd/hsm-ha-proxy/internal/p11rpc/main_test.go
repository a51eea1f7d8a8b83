package p11rpc

import (
	"testing"

	"go.uber.org/goleak"
)

// The capture test and the test client start goroutines (relays, readers): none may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
