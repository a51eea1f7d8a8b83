package pkcs11ha

import (
	"encoding/hex"
	"slices"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
)

// compareSecrets adds the secret keys to Inspect's report: for every partition and label, the reference
// key check value as Open's vote picks it (majoritySecret) and what every device holds. held says which
// devices' partitions opened (nil: not checked).
func compareSecrets(rep *inspection.Report, devs []*device, held [][]map[string]*keyObject) {
	for pi := range rep.Partitions {
		secrets := make([]map[string]*secretObject, len(devs))
		var labels []string
		for di, d := range devs {
			if held[di] == nil || held[di][pi] == nil {
				continue
			}
			secrets[di] = d.secretKeys(pi)
			for l := range secrets[di] {
				if !slices.Contains(labels, l) {
					labels = append(labels, l)
				}
			}
		}
		slices.Sort(labels)
		for _, l := range labels {
			var votes []*secretObject
			for _, ss := range secrets {
				if ss != nil {
					votes = append(votes, ss[l])
				}
			}
			ref := majoritySecret(votes)
			kr := inspection.KeyReport{Label: l, Algorithm: ref.alg, Fingerprint: hex.EncodeToString(ref.kcv), Consistent: true}
			kr.KeyType, kr.Bits = secretTypeBits(ref)
			for di, dr := range rep.Devices {
				kd := inspection.KeyOnDevice{Device: dr.Name, Status: inspection.KeyUnchecked}
				if secrets[di] != nil {
					k := secrets[di][l]
					switch {
					case k == nil:
						kd.Status = inspection.KeyMissing
					case sameSecret(k, ref.kcv, ref.alg):
						kd.Status = inspection.KeyMatch
					default:
						kd.Status = inspection.KeyDifferent
					}
					if k != nil {
						kd.Algorithm, kd.Fingerprint = k.alg, hex.EncodeToString(k.kcv)
						kd.KeyType, kd.Bits = secretTypeBits(k)
					}
				}
				if kd.Status == inspection.KeyMissing || kd.Status == inspection.KeyDifferent {
					kr.Consistent = false
				}
				kr.Devices = append(kr.Devices, kd)
			}
			rep.Partitions[pi].SecretKeys = append(rep.Partitions[pi].SecretKeys, kr)
		}
	}
}

func secretTypeBits(k *secretObject) (string, int) {
	if strings.HasPrefix(k.alg, "AES") {
		return "AES", 8 * k.size
	}
	return "HMAC", 8 * k.size
}
