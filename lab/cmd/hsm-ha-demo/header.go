package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The demo's message and key: what the printed curl and pkcs11-tool commands sign.
const (
	demoMessage   = "hello from pkcs11-ha\n"
	demoPartition = "payments"
	demoKeyLabel  = "ec-key"
)

// prepareKeys fetches the load's keys from the sidecar, checks them against the keys the harness
// imported, writes the demo key's public key and message for openssl, and makes the sample signature the
// printed curl command asks for (so the command is known to work).
func (d *demo) prepareKeys(ctx context.Context) ([]loadKey, sampleSig, error) {
	var sample sampleSig
	specs := []struct {
		partition, label string
		opts             crypto.SignerOpts
		what             string
	}{
		{demoPartition, demoKeyLabel, crypto.SHA256, "ECDSA P-256"},
		{"ledger", "rsa-key", crypto.SHA256, "RSA-2048 PKCS#1 v1.5"},
	}
	var keys []loadKey
	for _, s := range specs {
		k, err := d.client.Key(ctx, s.partition, s.label)
		if err != nil {
			return nil, sample, fmt.Errorf("fetching %s/%s from the sidecar: %w", s.partition, s.label, err)
		}
		want := d.topo.Keys[s.label]
		if want == nil {
			return nil, sample, fmt.Errorf("the harness has no key %q", s.label)
		}
		pub := want.Public()
		if eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(k.Public()) {
			return nil, sample, fmt.Errorf("%s/%s: the sidecar's public key is not the key imported into the devices", s.partition, s.label)
		}
		keys = append(keys, loadKey{key: k, pub: pub, opts: s.opts, name: s.partition + "/" + s.label, what: s.what})
	}

	digest := sha256.Sum256([]byte(demoMessage))
	sample.digestB64 = base64.StdEncoding.EncodeToString(digest[:])
	sample.msgPath = filepath.Join(d.tmp, "message.txt")
	sample.pubPath = filepath.Join(d.tmp, demoKeyLabel+".pub.pem")
	sample.sigPath = filepath.Join(d.tmp, "signature.der")
	sample.digestPath = filepath.Join(d.tmp, "message.sha256")
	sample.p11SigPath = filepath.Join(d.tmp, "pkcs11-signature.der")
	der, err := x509.MarshalPKIXPublicKey(keys[0].pub)
	if err != nil {
		return nil, sample, err
	}
	if err := os.WriteFile(sample.pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return nil, sample, err
	}
	if err := os.WriteFile(sample.msgPath, []byte(demoMessage), 0o644); err != nil {
		return nil, sample, err
	}
	if err := os.WriteFile(sample.digestPath, digest[:], 0o644); err != nil { // CKM_ECDSA signs a digest
		return nil, sample, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sig, dev, err := keys[0].key.SignDevice(sctx, digest[:], crypto.SHA256)
	if err != nil {
		return nil, sample, fmt.Errorf("signing the sample digest: %w", err)
	}
	if !keys[0].verify(digest[:], sig) {
		return nil, sample, errors.New("the sample signature does not verify")
	}
	sample.sigB64, sample.device = base64.StdEncoding.EncodeToString(sig), dev
	return keys, sample, nil
}

// sampleSig is the signature of demoMessage the header shows, and the files to verify it with openssl
// and to sign it with pkcs11-tool.
type sampleSig struct {
	digestB64, sigB64, device string
	msgPath, pubPath, sigPath string
	digestPath, p11SigPath    string // the raw SHA-256 digest of the message; pkcs11-tool's signature
}

func (d *demo) printHeader(setupTook time.Duration, s sampleSig) {
	var b strings.Builder
	fmt.Fprintf(&b, "hsm-ha-demo: %d SoftHSM2 devices in 2 regions behind the sidecar (ready in %.1fs)\n",
		len(d.topo.Devices), setupTook.Seconds())
	if d.opts.keep {
		fmt.Fprintf(&b, "  temp dir:  %s (kept at the end: --keep)\n", d.tmp)
	} else {
		fmt.Fprintf(&b, "  temp dir:  %s (removed at the end)\n", d.tmp)
	}
	for _, dev := range d.topo.Devices {
		role := "local pair, tier 0"
		if dev.Region != d.topo.LocalRegion {
			role = fmt.Sprintf("DR, tier 1, %v one-way through the relay", d.opts.drDelay)
		}
		fmt.Fprintf(&b, "  device:    %-9s %-7s %-46s p11-kit server pid %d\n", dev.Name, dev.Region, "("+role+")", dev.PID())
	}
	parts := make([]string, 0, len(d.topo.Partitions))
	for _, p := range d.topo.Partitions {
		parts = append(parts, p.Name)
	}
	fmt.Fprintf(&b, "  partitions: %s, each with ec-key (P-256) and rsa-key (RSA-2048) cloned on every device\n", strings.Join(parts, ", "))
	fmt.Fprintf(&b, "  sidecar:   %s serve --config %s   pid %d (log %s)\n",
		filepath.Base(d.sidecar.path), filepath.Join(d.tmp, "hsm-ha.yaml"), d.sidecar.pid, d.sidecar.logPath)
	fmt.Fprintf(&b, "  socket:    %s\n", d.sidecarSocket())
	fmt.Fprintf(&b, "  load:      %d workers signing with payments/ec-key (ECDSA) and ledger/rsa-key (RSA PKCS#1 v1.5) through the socket,\n", d.opts.workers)
	fmt.Fprintf(&b, "             every signature verified with Go's crypto/ecdsa and crypto/rsa; %s\n", rateText(d.opts.rate))
	b.WriteString("\n")
	fmt.Fprintf(&b, "Sign something yourself while the demo runs (the digest is SHA-256 of %q in %s):\n", demoMessage, s.msgPath)
	fmt.Fprintf(&b, "  %s\n", d.curlCommand(s))
	fmt.Fprintf(&b, "  e.g. -> {\"signature\":\"%s\",\"device\":\"%s\"}\n", s.sigB64, s.device)
	fmt.Fprintf(&b, "Public key: %s. Sign and verify with openssl:\n", s.pubPath)
	fmt.Fprintf(&b, "  %s | sed -E 's/.*\"signature\":\"([^\"]*)\".*/\\1/' | base64 -d > %s && openssl dgst -sha256 -verify %s -signature %s %s\n",
		d.curlCommand(s), s.sigPath, s.pubPath, s.sigPath, s.msgPath)
	b.WriteString("Or as a PKCS#11 token (the stock p11-kit-client.so, no PIN): list the partitions; sign with pkcs11-tool, verify with openssl:\n")
	list, sign := d.pkcs11ToolCommands(s)
	fmt.Fprintf(&b, "  %s\n  %s\n", list, sign)
	if d.opts.noFailover {
		b.WriteString("\nNo failover script (--no-failover). Ctrl-C to stop.\n")
	} else {
		st := d.opts.step
		fmt.Fprintf(&b, "\nFailover script: kill eastus-1 at %v, pause eastus-2 at %v, bring both back at %v. Ctrl-C to stop.\n",
			st, 2*st, 3*st)
	}
	if d.opts.duration > 0 {
		fmt.Fprintf(&b, "The demo stops by itself after %v.\n", d.opts.duration)
	}
	d.scr.event(strings.TrimRight(b.String(), "\n"))
}

func rateText(rate float64) string {
	if rate <= 0 {
		return "as fast as they go"
	}
	return fmt.Sprintf("at most %.0f signatures/s in all (--rate)", rate)
}

func (d *demo) sidecarSocket() string { return filepath.Join(d.tmp, "proxy.sock") }

// pkcs11Socket is the sidecar's PKCS#11 front end (server.pkcs11).
func (d *demo) pkcs11Socket() string { return filepath.Join(d.tmp, "pkcs11.sock") }

// pkcs11ToolCommands are two one-line commands through the PKCS#11 front end: pkcs11-tool -L, and a
// CKM_ECDSA signature of the sample digest in DER (--signature-format openssl) checked by openssl. The key
// is chosen by --id: opensc 0.23's --sign ignores --label.
func (d *demo) pkcs11ToolCommands(s sampleSig) (list, sign string) {
	tool := fmt.Sprintf("P11_KIT_SERVER_ADDRESS=%s pkcs11-tool --module %s",
		shellQuote("unix:path="+d.pkcs11Socket()), shellQuote(d.p11Client))
	list = tool + " -L"
	sign = fmt.Sprintf("%s --token-label %s --sign -m ECDSA --id %s -i %s -o %s --signature-format openssl && openssl dgst -sha256 -verify %s -signature %s %s",
		tool, demoPartition, d.keyIDHex(demoKeyLabel), shellQuote(s.digestPath), shellQuote(s.p11SigPath),
		shellQuote(s.pubPath), shellQuote(s.p11SigPath), shellQuote(s.msgPath))
	return list, sign
}

// curlCommand is the one-line curl command that signs the sample digest through the sidecar.
func (d *demo) curlCommand(s sampleSig) string {
	body := fmt.Sprintf(`{"digest":"%s","algorithm":"ECDSA_SHA256"}`, s.digestB64)
	return fmt.Sprintf("curl -s --unix-socket %s -H 'Content-Type: application/json' -d '%s' http://localhost/v1/partitions/%s/keys/%s/sign",
		shellQuote(d.sidecarSocket()), body, demoPartition, demoKeyLabel)
}

// keyIDHex is the CKA_ID the harness gave the key with this label, in hex as pkcs11-tool's --id wants it.
func (d *demo) keyIDHex(label string) string {
	for _, k := range d.topo.KeySpecs {
		if k.Label == label {
			return hex.EncodeToString(k.ID)
		}
	}
	return ""
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
