package pkcs11ha

import (
	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
)

func sessionCount(v uint, isMax bool) inspection.SessionCount {
	switch {
	case v == pkcs11.CK_UNAVAILABLE_INFORMATION:
		return inspection.SessionCount{Kind: inspection.SessionsUnknown}
	case isMax && v == pkcs11.CK_EFFECTIVELY_INFINITE:
		return inspection.SessionCount{Kind: inspection.SessionsNoLimit}
	}
	return inspection.SessionCount{Kind: inspection.SessionsCount, Value: uint64(v)}
}
