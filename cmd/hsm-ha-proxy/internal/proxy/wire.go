package proxy

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// toKeyInfo renders the library's KeyInfo as the API's KEY object.
func toKeyInfo(ki pkcs11ha.KeyInfo) (sidecarapi.KeyInfo, error) {
	der, err := x509.MarshalPKIXPublicKey(ki.Public)
	if err != nil {
		return sidecarapi.KeyInfo{}, fmt.Errorf("proxy: encoding the public key of %q: %w", ki.Label, err)
	}
	devs := ki.Devices
	if devs == nil {
		devs = []string{}
	}
	return sidecarapi.KeyInfo{
		Label:     ki.Label,
		ID:        strings.ToLower(ki.ID),
		Algorithm: ki.Algorithm,
		PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		Devices:   devs,
	}, nil
}

// toDeviceStatuses maps the library's status table to the API's. Every field is carried over
// (wire_test.go checks that none is forgotten).
func toDeviceStatuses(in []pkcs11ha.DeviceStatus) []sidecarapi.DeviceStatus {
	out := make([]sidecarapi.DeviceStatus, len(in))
	for i, d := range in {
		out[i] = sidecarapi.DeviceStatus{
			Name: d.Name, Region: d.Region, Tier: d.Tier, State: d.State, Reason: d.Reason, Since: d.Since,
			Breaker: d.Breaker, EWMA: d.EWMA, InFlight: d.InFlight, Abandoned: d.Abandoned,
			LastError: d.LastError, LastErrorClass: d.LastErrorClass,
			Reinits: d.Reinits, RetiredInstances: d.RetiredInstances, StuckCalls: d.StuckCalls, ExcludedKeys: d.ExcludedKeys,
			WorkerPID: d.WorkerPID, WorkerRestarts: d.WorkerRestarts, WorkerExit: d.WorkerExit,
		}
		if d.Lanes != nil {
			out[i].Lanes = &sidecarapi.LaneStatus{Total: d.Lanes.Total, Open: d.Lanes.Open}
		}
		if d.Partitions != nil {
			out[i].Partitions = make([]sidecarapi.PartitionStatus, len(d.Partitions))
			for j, p := range d.Partitions {
				out[i].Partitions[j] = sidecarapi.PartitionStatus{Name: p.Name, Open: p.Open, Error: p.Error, Logins: p.Logins}
			}
		}
	}
	return out
}
