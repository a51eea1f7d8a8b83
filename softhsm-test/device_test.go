package softhsmtest

import (
	"crypto/sha256"
	"regexp"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

func TestDefaultTopologySignsOnEveryDevice(t *testing.T) {
	began := time.Now()
	topo := startT(t, Options{})
	t.Logf("StartT with the default topology: %v", time.Since(began))

	require.Len(t, topo.Devices, 4)
	require.Len(t, topo.Keys, 4)
	assert.Equal(t, "eastus", topo.LocalRegion)
	serials := map[string]string{}
	serialRE := regexp.MustCompile(`^[0-9a-f]{16}$`)
	for _, d := range topo.Devices {
		assert.True(t, d.Running(), d.Name)
		assert.NotZero(t, d.PID(), d.Name)
		assert.Equal(t, map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=" + d.Socket}, d.ModuleEnv)
		assert.Less(t, len(d.Socket), 108)
		assert.Len(t, d.Keys, 4)
		for part, s := range d.Serials {
			assert.Regexp(t, serialRE, s, "%s/%s", d.Name, part)
			assert.NotContains(t, serials, s, "serial of %s/%s is not unique", d.Name, part)
			serials[s] = d.Name + "/" + part
		}
	}
	assert.Len(t, serials, 8)

	for _, d := range topo.Devices {
		p := loadModule(t, d)
		s := loginAndFind(t, p, "payments", "1234", "ec-key")
		sig, err := s.signECDSA()
		require.NoError(t, err, d.Name)
		verifyECDSA(t, topo.Keys["ec-key"].Public(), sig)
		assert.Equal(t, wantECPoint(t, topo.Keys["ec-key"].Public()), ecPoint(t, p, s.sh, "ec-key"), d.Name)
		serial, err := tokenSerial(p, "payments")
		require.NoError(t, err)
		assert.Equal(t, d.Serials["payments"], serial, d.Name)

		// the second partition has its own PIN and the same keys
		l := loginAndFind(t, p, "ledger", "2345", "ec384-key")
		sig, err = l.signECDSA()
		require.NoError(t, err, d.Name)
		verifyECDSA(t, topo.Keys["ec384-key"].Public(), sig)
	}

	// latency through the relay: no delay (eastus-1) and the default DR delay of 10 ms (westus-1)
	for _, name := range []string{"eastus-1", "westus-1"} {
		d := topo.Device(name)
		s := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
		n := 200
		if name == "westus-1" {
			n = 5
		}
		durs := make([]time.Duration, n)
		for i := range durs {
			t0 := time.Now()
			_, err := s.signECDSA()
			require.NoError(t, err)
			durs[i] = time.Since(t0)
		}
		sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
		t.Logf("%s: ECDSA P-256 sign through the relay (3 round trips): p50 %v, p90 %v over %d signs", name, durs[n/2], durs[n*9/10], n)
		if name == "westus-1" {
			assert.GreaterOrEqual(t, durs[0], 60*time.Millisecond, "3 round trips at 2 x 10 ms")
		}
	}

	// p11-kit 0.24 cannot carry CKM_EDDSA over its RPC (see the in-process test for Ed25519)
	s := loginAndFind(t, loadModule(t, topo.Device("eastus-2")), "payments", "1234", "ed-key")
	err := s.p.SignInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEDDSA, nil)}, s.key)
	if err == nil {
		msg := sha256.Sum256([]byte("m"))
		_, err = s.p.Sign(s.sh, msg[:])
	}
	t.Logf("Ed25519 through p11-kit: %v", err)

	// the config for this topology
	data, err := topo.ConfigYAML(ConfigOptions{})
	require.NoError(t, err)
	var cfg testConfig
	require.NoError(t, yaml.Unmarshal(data, &cfg), string(data))
	require.Len(t, cfg.Devices, 4)
	for i, d := range topo.Devices {
		assert.Equal(t, d.Name, cfg.Devices[i].Name)
		assert.Equal(t, d.Region, cfg.Devices[i].Region)
		assert.Equal(t, d.ModulePath, cfg.Devices[i].Module)
		assert.Equal(t, d.ModuleEnv, cfg.Devices[i].ModuleEnv)
	}
	assert.True(t, slices.EqualFunc(cfg.Partitions, topo.Partitions, func(c testPartition, p PartitionSpec) bool {
		return c.Name == p.Name && c.TokenLabel == p.TokenLabel && c.PIN == p.PIN
	}))
}

type testConfig struct {
	LocalRegion string `yaml:"local_region"`
	Devices     []struct {
		Name      string            `yaml:"name"`
		Region    string            `yaml:"region"`
		Module    string            `yaml:"module"`
		ModuleEnv map[string]string `yaml:"module_env"`
	} `yaml:"devices"`
	Partitions []testPartition `yaml:"partitions"`
	Policy     map[string]any  `yaml:"policy"`
	Server     map[string]any  `yaml:"server"`
	Clients    []any           `yaml:"clients"`
}

type testPartition struct {
	Name       string `yaml:"name"`
	TokenLabel string `yaml:"token_label"`
	PIN        string `yaml:"pin"`
	PINFile    string `yaml:"pin_file"`
	PINEnv     string `yaml:"pin_env"`
}
