package softhsmtest

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// configTopology is a Topology value without processes, enough for ConfigYAML.
func configTopology(t *testing.T) *Topology {
	dir := t.TempDir()
	return &Topology{
		Dir:         dir,
		LocalRegion: "eastus",
		Partitions:  DefaultPartitions(),
		Devices: []*Device{
			{Name: "eastus-1", Region: "eastus", ModulePath: "/lib/p11-kit-client.so", ServerSocket: "/tmp/x/eastus-1-server.sock",
				ModuleEnv: map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=/tmp/x/eastus-1.sock"}},
			{Name: "westus-1", Region: "westus", ModulePath: filepath.Join(dir, "lib softhsm2.so"),
				ModuleEnv: map[string]string{"SOFTHSM2_CONF": `/tmp/odd "name"/softhsm2.conf`}},
		},
	}
}

func TestConfigYAML(t *testing.T) {
	topo := configTopology(t)
	data, err := topo.ConfigYAML(ConfigOptions{
		PolicyYAML: `
    attempt_timeout: {local: 50ms, dr: 250ms}
    hedging:
      enabled: true
`,
		ServerYAML:  "listen: unix:///run/hsm-ha-proxy.sock",
		ClientsYAML: "- {name: payments-app, unix_uid: 1000, partitions: [payments]}",
	})
	require.NoError(t, err)
	var cfg testConfig
	require.NoError(t, yaml.Unmarshal(data, &cfg), string(data))
	assert.Equal(t, "eastus", cfg.LocalRegion)
	require.Len(t, cfg.Devices, 2)
	assert.Equal(t, topo.Devices[1].ModulePath, cfg.Devices[1].Module)
	assert.Equal(t, topo.Devices[1].ModuleEnv, cfg.Devices[1].ModuleEnv)
	assert.Equal(t, []testPartition{
		{Name: "payments", TokenLabel: "payments", PIN: "1234"},
		{Name: "ledger", TokenLabel: "ledger", PIN: "2345"},
	}, cfg.Partitions)
	assert.Equal(t, map[string]any{"local": "50ms", "dr": "250ms"}, cfg.Policy["attempt_timeout"])
	assert.Equal(t, map[string]any{"enabled": true}, cfg.Policy["hedging"])
	assert.Equal(t, "unix:///run/hsm-ha-proxy.sock", cfg.Server["listen"])
	require.Len(t, cfg.Clients, 1)

	// PIN files
	path := filepath.Join(topo.Dir, "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, ConfigOptions{PINStyle: PINFile}))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	data, err = os.ReadFile(path)
	require.NoError(t, err)
	cfg = testConfig{}
	require.NoError(t, yaml.Unmarshal(data, &cfg))
	for i, p := range topo.Partitions {
		assert.Empty(t, cfg.Partitions[i].PIN)
		pin, err := os.ReadFile(cfg.Partitions[i].PINFile)
		require.NoError(t, err)
		assert.Equal(t, p.PIN, string(pin))
		fi, err := os.Stat(cfg.Partitions[i].PINFile)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	}

	// NoRelays: the devices' own server sockets; in-process devices and the topology are left alone
	data, err = topo.ConfigYAML(ConfigOptions{NoRelays: true})
	require.NoError(t, err)
	cfg = testConfig{}
	require.NoError(t, yaml.Unmarshal(data, &cfg))
	assert.Equal(t, map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=/tmp/x/eastus-1-server.sock"}, cfg.Devices[0].ModuleEnv)
	assert.Equal(t, topo.Devices[1].ModuleEnv, cfg.Devices[1].ModuleEnv)
	assert.Equal(t, "unix:path=/tmp/x/eastus-1.sock", topo.Devices[0].ModuleEnv["P11_KIT_SERVER_ADDRESS"])

	// PIN environment variables
	data, err = topo.ConfigYAML(ConfigOptions{PINStyle: PINEnv})
	require.NoError(t, err)
	cfg = testConfig{}
	require.NoError(t, yaml.Unmarshal(data, &cfg))
	assert.Equal(t, "PAYMENTS_PIN", cfg.Partitions[0].PINEnv)
	assert.Equal(t, map[string]string{"PAYMENTS_PIN": "1234", "LEDGER_PIN": "2345"}, topo.PINEnv())
	assert.Equal(t, "MY_APP_2_PIN", PINEnvVar("my-app.2"))

	// bad input
	for name, opts := range map[string]ConfigOptions{
		"pin style":  {PINStyle: "vault"},
		"policy":     {PolicyYAML: "a: [unclosed"},
		"policy seq": {PolicyYAML: "- a"},
		"clients":    {ClientsYAML: "name: x"},
		"server":     {ServerYAML: "just a string"},
	} {
		_, err := topo.ConfigYAML(opts)
		assert.Error(t, err, name)
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{}.withDefaults()
	require.NoError(t, ok.validate())
	for name, mutate := range map[string]func(o *Options){
		"no devices":       func(o *Options) { o.Devices = []DeviceSpec{} },
		"duplicate device": func(o *Options) { o.Devices[1].Name = o.Devices[0].Name },
		"bad device name":  func(o *Options) { o.Devices[0].Name = "../x" },
		"no region":        func(o *Options) { o.Devices[0].Region = "" },
		"negative delay":   func(o *Options) { o.Devices[0].Delay = -time.Second },
		"unknown missing":  func(o *Options) { o.Devices[0].MissingKeys = []string{"nope"} },
		"unknown differs":  func(o *Options) { o.Devices[0].DifferentKeys = []string{"nope"} },
		"unknown PIN part": func(o *Options) { o.Devices[0].PINOverride = map[string]string{"nope": "1111"} },
		"short PIN":        func(o *Options) { o.Partitions[0].PIN = "12" },
		"duplicate label":  func(o *Options) { o.Partitions[1].TokenLabel = o.Partitions[0].TokenLabel },
		"long label":       func(o *Options) { o.Partitions[0].TokenLabel = strings.Repeat("l", 33) },
		"unknown kind":     func(o *Options) { o.Keys[0].Kind = "dsa1024" },
		"duplicate key id": func(o *Options) { o.Keys[1].ID = o.Keys[0].ID },
		"no key id":        func(o *Options) { o.Keys[0].ID = nil },
	} {
		o := Options{}.withDefaults()
		o.Devices = append([]DeviceSpec(nil), o.Devices...)
		o.Keys = append([]KeySpec(nil), o.Keys...)
		mutate(&o)
		assert.Error(t, o.validate(), name)
	}
	_, err := Start(context.Background(), Options{Devices: []DeviceSpec{{Name: "x"}}})
	assert.ErrorContains(t, err, "no region")
}

func TestLookupTools(t *testing.T) {
	tools, err := LookupTools()
	require.NoError(t, err, "the Debian packages softhsm2, p11-kit and p11-kit-modules are needed")
	for _, p := range []string{tools.SoftHSMModule, tools.SoftHSMUtil, tools.P11Kit, tools.P11KitClient} {
		assert.FileExists(t, p)
	}

	_, err = findFile("SOFTHSMTEST_TEST_UNSET", "libnothing.so", "nothing-pkg", []string{"/nonexistent/libnothing.so"})
	assert.ErrorContains(t, err, "install the Debian package nothing-pkg")
	t.Setenv("SOFTHSMTEST_TEST_SET", "/nonexistent/x.so")
	_, err = findFile("SOFTHSMTEST_TEST_SET", "x.so", "x", nil)
	assert.ErrorContains(t, err, "SOFTHSMTEST_TEST_SET")
	_, err = findProgram("softhsmtest-no-such-program", "some-pkg")
	assert.ErrorContains(t, err, "install the Debian package some-pkg")

	t.Setenv(EnvSoftHSMModule, "/nonexistent/libsofthsm2.so")
	_, err = LookupTools()
	assert.ErrorContains(t, err, EnvSoftHSMModule)
	_, err = Start(context.Background(), Options{Dir: t.TempDir()})
	assert.Error(t, err)
}

func TestSerialRecord(t *testing.T) {
	rec := func(typ uint64, kind uint64, val string) []byte {
		b := make([]byte, 24, 24+len(val))
		binary.BigEndian.PutUint64(b[0:], typ)
		binary.BigEndian.PutUint64(b[8:], kind)
		binary.BigEndian.PutUint64(b[16:], uint64(len(val)))
		return append(b, val...)
	}
	data := append(rec(0x80005349, 3, "label"), rec(attrTokenSerial, 3, "0123456789abcdef")...)
	data = append(data, rec(0x8000534B, 2, "xxxxxxxx")...)
	off, n, err := serialRecord(data)
	require.NoError(t, err)
	assert.Equal(t, "0123456789abcdef", string(data[off:off+n]))

	_, _, err = serialRecord(rec(0x80005349, 3, "label"))
	assert.Error(t, err)
	_, _, err = serialRecord(append(data, rec(attrTokenSerial, 3, "0123456789abcdef")...))
	assert.Error(t, err, "twice")

	uuid, serial, err := newTokenUUID()
	require.NoError(t, err)
	assert.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`, uuid)
	assert.Equal(t, strings.ReplaceAll(uuid, "-", "")[16:], serial)
}

func TestGroupLimit(t *testing.T) {
	g := newGroup(context.Background(), 2)
	var running, peak atomic.Int32
	for range 10 {
		g.Go(func(context.Context) error {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
			running.Add(-1)
			return nil
		})
	}
	require.NoError(t, g.Wait())
	assert.LessOrEqual(t, peak.Load(), int32(2))

	boom := errors.New("boom")
	g = newGroup(context.Background(), 1)
	var ran atomic.Int32
	g.Go(func(context.Context) error { return boom })
	for range 5 {
		g.Go(func(ctx context.Context) error { ran.Add(1); return ctx.Err() })
	}
	assert.ErrorIs(t, g.Wait(), boom)
}

func TestURIEscape(t *testing.T) {
	assert.Equal(t, "payments", uriEscape("payments"))
	assert.Equal(t, "my%20token%2Fa%3Bb", uriEscape("my token/a;b"))
}
