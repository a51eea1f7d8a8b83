package bench

import (
	"context"
	"crypto"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

// fakeSigner answers every call at once as dev, with err.
type fakeSigner struct {
	dev string
	err error
}

func (f fakeSigner) SignDevice(context.Context, []byte, crypto.SignerOpts) ([]byte, string, error) {
	time.Sleep(100 * time.Microsecond)
	return []byte("sig"), f.dev, f.err
}

// TestLoadSeesDR: while the load runs (its operations still in the workers' buffers), drSuccessAfter
// says whether a DR device has served a call that ended after a given time; failures and local devices
// do not count. The region-loss trials end on it.
func TestLoadSeesDR(t *testing.T) {
	defer goleak.VerifyNone(t)
	tests := []struct {
		name string
		k    fakeSigner
		want bool
	}{
		{"DR serves", fakeSigner{dev: "westus-1"}, true},
		{"local serves", fakeSigner{dev: "eastus-1"}, false},
		{"DR fails", fakeSigner{dev: "westus-2", err: errors.New("CKR_DEVICE_ERROR")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := startLoad(tc.k, 2, time.Second)
			t0 := time.Now()
			got := false
			for end := time.Now().Add(time.Second); !got && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
				got = l.drSuccessAfter(t0)
			}
			late := l.drSuccessAfter(time.Now().Add(time.Hour))
			ops := l.stop()
			assert.Equal(t, tc.want, got, "a DR success after t0 seen while the load runs")
			assert.False(t, late, "no success after a time still to come")
			assert.NotEmpty(t, ops, "stop returns the operations")
		})
	}
}
