package harnesstest

import (
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// TestStartClosesWithTheTest: the topology runs during the test and its server process is gone once the
// test's cleanups have run.
func TestStartClosesWithTheTest(t *testing.T) {
	if _, err := softhsmtest.LookupTools(); err != nil {
		t.Skip(err)
	}
	var pid int
	var dir string
	t.Run("inner", func(t *testing.T) {
		topo := Start(t, softhsmtest.Options{
			Devices:    softhsmtest.DefaultTopology(0)[:1],
			Partitions: softhsmtest.DefaultPartitions()[:1],
			Keys:       softhsmtest.DefaultKeys()[1:2],
		})
		dir = topo.Dir
		require.Len(t, topo.Devices, 1)
		pid = topo.Devices[0].PID()
		require.Positive(t, pid)
		require.NoError(t, syscall.Kill(pid, 0), "the device server runs during the test")
	})
	assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "the device server is reaped after the test")
	assert.NoDirExists(t, dir, "the topology directory (the test's TempDir) is removed")
}

func TestSoftKeysAreShared(t *testing.T) {
	a, b := SoftKeys(t), SoftKeys(t)
	require.NotNil(t, a.RSA)
	require.NotNil(t, a.EC)
	require.Len(t, a.Ed, 64)
	assert.True(t, a.RSA.Equal(b.RSA) && a.EC.Equal(b.EC) && a.Ed.Equal(b.Ed), "one set of keys per process")
	assert.Equal(t, 2048, a.RSA.N.BitLen())
}
