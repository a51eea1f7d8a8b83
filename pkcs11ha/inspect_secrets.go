package pkcs11ha

import (
	"encoding/hex"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
)

// compareSecrets adds the secret keys to Inspect's report: for every partition and label, the reference
// key check value as Open's vote picks it (majority) and what every device holds. held says which
// devices' partitions opened (nil: not checked).
func compareSecrets(rep *inspection.Report, devs []*device, held [][]map[string]*keyObject) {
	for pi := range rep.Partitions {
		secrets := make([]map[string]*secretObject, len(devs))
		for di, d := range devs {
			if held[di] != nil && held[di][pi] != nil {
				secrets[di] = d.secretKeys(pi)
			}
		}
		rep.Partitions[pi].SecretKeys = compareLabels(rep.Partitions[pi].SecretKeys, rep.Devices, secrets, sameSecret, describeSecret)
	}
}

func describeSecret(k *secretObject) inspection.KeyOnDevice {
	kd := inspection.KeyOnDevice{Algorithm: k.alg, Fingerprint: hex.EncodeToString(k.kcv)}
	kd.KeyType, kd.Bits = secretTypeBits(k)
	return kd
}

func secretTypeBits(k *secretObject) (string, int) {
	if strings.HasPrefix(k.alg, "AES") {
		return "AES", 8 * k.size
	}
	return "HMAC", 8 * k.size
}
