package pkcs11ha

import (
	"encoding/hex"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// compareSecrets adds the secret keys to Inspect's report: for every partition and label, the reference
// key check value as Open's vote picks it (majority) and what every device holds. held is
// [device][partition] -> label -> secret key, nil where the partition did not open (not checked).
func compareSecrets(rep *inspection.Report, held [][]map[string]*devicebackend.SecretObject) {
	for pi := range rep.Partitions {
		secrets := make([]map[string]*devicebackend.SecretObject, len(held))
		for di := range held {
			if held[di] != nil {
				secrets[di] = held[di][pi]
			}
		}
		rep.Partitions[pi].SecretKeys = compareLabels(rep.Partitions[pi].SecretKeys, rep.Devices, secrets, sameSecret, describeSecret)
	}
}

func describeSecret(k *devicebackend.SecretObject) inspection.KeyOnDevice {
	kd := inspection.KeyOnDevice{Algorithm: k.Alg, Fingerprint: hex.EncodeToString(k.KCV)}
	kd.KeyType, kd.Bits = secretTypeBits(k)
	return kd
}

func secretTypeBits(k *devicebackend.SecretObject) (string, int) {
	if strings.HasPrefix(k.Alg, "AES") {
		return "AES", 8 * k.Size
	}
	return "HMAC", 8 * k.Size
}
