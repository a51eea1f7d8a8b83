package pkcs11ha

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"slices"
)

// compareKeys builds the key part of Inspect's report: for every partition and key label found on any
// device, the reference key as Open picks it (majorityKey over the devices whose partition opened, in
// config order) and what every device holds under that label. held is [device][partition] -> label -> key,
// nil where the partition did not open.
func compareKeys(cfg *Config, devs []inspection.DeviceReport, held [][]map[string]*keyObject) []inspection.PartitionReport {
	out := make([]inspection.PartitionReport, len(cfg.Partitions))
	for pi, pc := range cfg.Partitions {
		var labels []string
		for _, h := range held {
			if h == nil || h[pi] == nil {
				continue
			}
			for l := range h[pi] {
				if !slices.Contains(labels, l) {
					labels = append(labels, l)
				}
			}
		}
		slices.Sort(labels)
		pr := inspection.PartitionReport{Name: pc.Name, Keys: []inspection.KeyReport{}}
		for _, l := range labels {
			var votes []*keyObject
			for _, h := range held {
				if h != nil && h[pi] != nil {
					votes = append(votes, h[pi][l])
				}
			}
			ref := majorityKey(votes)
			kr := inspection.KeyReport{Label: l, Algorithm: ref.alg, Fingerprint: fingerprint(ref.pubDER), Consistent: true}
			kr.KeyType, kr.Bits = keyTypeBits(ref.pub)
			for di, dr := range devs {
				kd := inspection.KeyOnDevice{Device: dr.Name, Status: inspection.KeyUnchecked}
				if held[di] != nil && held[di][pi] != nil {
					k := held[di][pi][l]
					switch {
					case k == nil:
						kd.Status = inspection.KeyMissing
					case bytes.Equal(k.pubDER, ref.pubDER):
						kd.Status = inspection.KeyMatch
					default:
						kd.Status = inspection.KeyDifferent
					}
					if k != nil {
						kd.Algorithm, kd.Fingerprint = k.alg, fingerprint(k.pubDER)
						kd.KeyType, kd.Bits = keyTypeBits(k.pub)
					}
				}
				if kd.Status == inspection.KeyMissing || kd.Status == inspection.KeyDifferent {
					kr.Consistent = false
				}
				kr.Devices = append(kr.Devices, kd)
			}
			pr.Keys = append(pr.Keys, kr)
		}
		out[pi] = pr
	}
	return out
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
