package pkcs11ha

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// compareKeys builds the key part of Inspect's report: for every partition and key label found on any
// device, the reference key as Open picks it (majority over the devices whose partition opened, in config
// order) and what every device holds under that label. held is [device][partition] -> label -> key, nil
// where the partition did not open.
func compareKeys(cfg *Config, devs []inspection.DeviceReport, held [][]map[string]*devicebackend.KeyObject) []inspection.PartitionReport {
	out := make([]inspection.PartitionReport, len(cfg.Partitions))
	for pi, pc := range cfg.Partitions {
		keys := make([]map[string]*devicebackend.KeyObject, len(held))
		for di, h := range held {
			if h != nil {
				keys[di] = h[pi]
			}
		}
		out[pi] = inspection.PartitionReport{Name: pc.Name, Keys: compareLabels([]inspection.KeyReport{}, devs, keys, samePublicKey, describeKey)}
	}
	return out
}

func describeKey(k *devicebackend.KeyObject) inspection.KeyOnDevice {
	kd := inspection.KeyOnDevice{Algorithm: k.Alg, Fingerprint: fingerprint(k.PubDER)}
	kd.KeyType, kd.Bits = keyTypeBits(k.Pub)
	return kd
}

// compareLabels appends to into the report of one partition's keys of one kind (key pairs or secret
// keys), sorted by label: for every label a device holds, the reference as Open's vote picks it (majority
// with same) and what every device holds. held is per device (in devs' order) label -> key, nil where the
// partition did not open; describe gives a key's type, size, algorithm and fingerprint.
func compareLabels[T any](into []inspection.KeyReport, devs []inspection.DeviceReport, held []map[string]*T, same func(a, b *T) bool, describe func(*T) inspection.KeyOnDevice) []inspection.KeyReport {
	for _, l := range slices.Sorted(maps.Keys(labelsIn(held))) {
		ref := majority(votes(held, l), same)
		rd := describe(ref)
		kr := inspection.KeyReport{Label: l, Algorithm: rd.Algorithm, Fingerprint: rd.Fingerprint, KeyType: rd.KeyType, Bits: rd.Bits, Consistent: true}
		for di, dr := range devs {
			kd := inspection.KeyOnDevice{Status: inspection.KeyUnchecked}
			if held[di] != nil {
				k := held[di][l]
				if k != nil {
					kd = describe(k)
				}
				switch {
				case k == nil:
					kd.Status = inspection.KeyMissing
				case same(k, ref):
					kd.Status = inspection.KeyMatch
				default:
					kd.Status = inspection.KeyDifferent
				}
			}
			kd.Device = dr.Name
			if kd.Status == inspection.KeyMissing || kd.Status == inspection.KeyDifferent {
				kr.Consistent = false
			}
			kr.Devices = append(kr.Devices, kd)
		}
		into = append(into, kr)
	}
	return into
}

// fingerprint is the hex SHA-256 of a SubjectPublicKeyInfo DER (what `openssl pkey -pubin -outform DER |
// sha256sum` prints for the PEM public key).
func fingerprint(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

func keyTypeBits(pub crypto.PublicKey) (string, int) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "RSA", k.N.BitLen()
	case *ecdsa.PublicKey:
		return "EC", k.Curve.Params().BitSize
	case ed25519.PublicKey:
		return "EdDSA", 256
	}
	return "unknown", 0
}
