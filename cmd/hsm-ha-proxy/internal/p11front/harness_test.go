package p11front

import (
	"context"
	"crypto"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// This file is the package's only use of the SoftHSM harness (softhsm-test), so that a change of the
// harness's API touches one file.

// clientModule is the path of the stock p11-kit-client.so; the test is skipped without it.
func clientModule(t testing.TB) string {
	t.Helper()
	tools, err := softhsmtest.LookupTools()
	if err != nil {
		t.Skipf("p11-kit client module not available: %v", err)
	}
	return tools.P11KitClient
}

// softSigners are the process-wide software test keys: RSA-2048, ECDSA P-256 and Ed25519.
func softSigners(t testing.TB) (rsaKey, ecKey, edKey crypto.Signer) {
	k := harnesstest.SoftKeys(t)
	return k.RSA, k.EC, k.Ed
}

// devices is the harness's default topology — eastus-1/-2 local, westus-1/-2 DR, each a `p11-kit server`
// process holding partitions payments and ledger with rsa-key (01, RSA-2048), ec-key (02, P-256),
// ec384-key (03, P-384) and ed-key (04, Ed25519) — and a cluster opened over it.
type devices struct {
	topo *softhsmtest.Topology
	cl   *pkcs11ha.Cluster
	keys map[string]crypto.Signer // label -> the software original of every device's key
	// certs are the certificates beside the keys (label -> DER) with startDevicesWith(t, true), else empty.
	certs map[string][]byte
	// secrets are the values of the secret keys (label -> value) with Options.SecretKeys, else empty.
	secrets map[string][]byte
}

// startDevices starts the topology and opens the cluster (closed, with the leak check's allowance for
// calls stuck in killed devices, when the test ends).
func startDevices(t testing.TB) *devices {
	t.Helper()
	return startDevicesWith(t, false)
}

// startDevicesWith is startDevices; with certificates, every token also holds a self-signed certificate
// (CN = label) beside each key, with the key's label and id (the harness's Options.Certificates).
func startDevicesWith(t testing.TB, certificates bool) *devices {
	t.Helper()
	return startDevicesOpts(t, softhsmtest.Options{Certificates: certificates}, "")
}

// startDevicesOpts is startDevices with the harness's options and more policy lines (YAML, "" for none).
func startDevicesOpts(t testing.TB, opts softhsmtest.Options, policy string) *devices {
	t.Helper()
	return startDevicesPart(t, opts, "request_timeout: 10s\nattempt_timeout: {local: 1s, dr: 2s}\nhealth: {interval: 200ms, down_interval: 100ms}\noaep_fallback: true\n"+policy, "")
}

// startKeyDevices is startDevicesOpts for key management: key_replication import (the harness's p11-kit
// 0.24 devices cannot carry CKM_AES_KEY_WRAP_PAD, docs/keys.md), and probes that do not call a device down
// for being slow on a loaded host (a creation succeeds without a device that is down, and these tests read
// every device). It returns once every device is up.
func startKeyDevices(t testing.TB, opts softhsmtest.Options) *devices {
	t.Helper()
	d := startDevicesPart(t, opts, "request_timeout: 20s\nattempt_timeout: {local: 5s, dr: 5s}\nhealth: {interval: 500ms, down_interval: 200ms, timeout: 5s, fall: 10}\n",
		"key_replication: import")
	require.Eventually(t, func() bool {
		for _, s := range d.cl.Status() {
			if s.State != "up" && s.State != "degraded" {
				return false
			}
		}
		return true
	}, time.Minute, 50*time.Millisecond, "every device up")
	return d
}

// startDevicesPart starts the devices with policy (YAML lines) and lines added to every partition.
func startDevicesPart(t testing.TB, opts softhsmtest.Options, policy, partition string) *devices {
	t.Helper()
	if testing.Short() {
		t.Skip("runs SoftHSM devices")
	}
	topo := harnesstest.Start(t, opts)
	path := filepath.Join(topo.Dir, "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{
		PolicyYAML:    policy,
		PartitionYAML: partition,
	}))
	cfg, err := sidecarconfig.Load(path) // policy.request_timeout is the sidecar's
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := pkcs11ha.Open(ctx, cfg.Library())
	require.NoError(t, err)
	t.Cleanup(func() { leakcheck.CloseCluster(t, cl) })
	return &devices{topo: topo, cl: cl, keys: topo.Keys, certs: topo.Certificates, secrets: topo.SecretKeys}
}

// kill SIGKILLs a device's server; hang makes its relay stop forwarding; heal ends a hang.
func (d *devices) kill(t testing.TB, name string) { require.NoError(t, d.topo.Device(name).Kill()) }
func (d *devices) hang(t testing.TB, name string) { require.NoError(t, d.topo.Device(name).Hang()) }
func (d *devices) heal(t testing.TB, name string) { require.NoError(t, d.topo.Device(name).Pass()) }

// directSocket is the socket of eastus-1's own `p11-kit server` (no relay, no sidecar): what a stock
// p11-kit server in front of one device gives, for comparison.
func (d *devices) directSocket() string { return d.topo.Device("eastus-1").ServerSocket }

// pin is a partition's user PIN on the devices (a client of the front end needs none).
func (d *devices) pin(partition string) string {
	for _, p := range d.topo.Partitions {
		if p.Name == partition {
			return p.PIN
		}
	}
	return ""
}

// deviceObject reads the object of pkcs11-tool --type typ labelled label from a device itself — its own
// module and token, not through the cluster — or nil when the device holds none.
func (d *devices) deviceObject(t testing.TB, device, partition, typ, label string) []byte {
	t.Helper()
	return harnesstest.DeviceObject(t, d.topo.Device(device), partition, typ, label)
}

// deviceNames are the harness's devices, in config order.
func (d *devices) deviceNames() []string {
	var out []string
	for _, dev := range d.topo.Devices {
		out = append(out, dev.Name)
	}
	return out
}
