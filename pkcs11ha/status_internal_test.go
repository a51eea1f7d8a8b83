package pkcs11ha

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/failover"
	"github.com/pkcs11-ha/pkcs11-ha/health"
)

// TestReasonOf: Status.Reason names what keeps a device out, not merely why its health last changed.
func TestReasonOf(t *testing.T) {
	until := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC)
	up := health.Status{State: health.StateUp, Reason: "2 probe successes"}
	closed := failover.MemberStatus{Breaker: "closed"}
	capMsg := "pkcs11ha: retiring the module instance would exceed policy.max_stuck_calls (4 of 4)"
	tests := []struct {
		name string
		hs   health.Status
		ms   failover.MemberStatus
		ds   DeviceStatus
		cap  string
		want string
	}{
		{"in rotation", up, closed, DeviceStatus{}, "", "2 probe successes"},
		{"breaker open while probes pass", up,
			failover.MemberStatus{Breaker: "open", Offenses: 3, OpenUntil: until.In(time.FixedZone("X", 3600))}, DeviceStatus{}, "",
			"breaker open after 3 offences until 2026-12-07T12:00:30Z"},
		{"breaker half-open", up, failover.MemberStatus{Breaker: "half-open", Offenses: 1}, DeviceStatus{}, "",
			"breaker half-open after 1 offence: trial calls decide"},
		{"probes failing", health.Status{State: health.StateDown, Reason: "3 probe failures: CKR_DEVICE_ERROR"}, closed,
			DeviceStatus{}, "", "3 probe failures: CKR_DEVICE_ERROR"},
		{"probe failed once", health.Status{State: health.StateDegraded, Reason: "probe failure: timeout"}, closed,
			DeviceStatus{}, "", "probe failure: timeout"},
		{"stuck calls at the cap", health.Status{State: health.StateDown, Reason: "3 probe failures: timeout"}, closed,
			DeviceStatus{}, capMsg, capMsg},
		{"abandoned calls at the cap", up, failover.MemberStatus{Breaker: "closed", AbandonedCap: true},
			DeviceStatus{Abandoned: 4}, "", "4 abandoned calls still running: at the cap"},
		{"abandoned calls", up, closed, DeviceStatus{Abandoned: 1}, "", "1 abandoned call still running"},
		{"everything at once", health.Status{State: health.StateDown, Reason: "device marked down"},
			failover.MemberStatus{Breaker: "open", Offenses: 1, OpenUntil: until},
			DeviceStatus{ExcludedKeys: map[string]string{"p/k": "different key"},
				Partitions: []PartitionStatus{{Name: "p", Open: true}, {Name: "q", Error: "PIN rejected"}, {Name: "r"}}}, "",
			"device marked down; breaker open after 1 offence until 2026-12-07T12:00:30Z; 1 key excluded; " +
				"partition q not open: PIN rejected; partition r not open"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, reasonOf(tc.hs, tc.ms, &tc.ds, tc.cap))
		})
	}
}
