package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// checkPIN is every partition's PIN in these tests: distinctive, so finding it in any output is a leak.
const checkPIN = "pin-Check-80417"

// testDev is one device of a check test.
type testDev struct {
	name, region string
	differentKey string // a key label this device holds a different key under
	wrongPIN     string // a partition whose token on this device has another PIN than the config says
}

var (
	fourDevices = []testDev{{name: "eastus-1", region: "eastus"}, {name: "eastus-2", region: "eastus"},
		{name: "westus-1", region: "westus"}, {name: "westus-2", region: "westus"}}
)

// checkDevices starts devs with the SoftHSM harness (DR devices 2 ms one-way away), kills the named ones
// and writes their config; it returns the config path. It is the only place these tests use the harness,
// and it fails the test if goroutines are left once the devices are gone.
func checkDevices(t *testing.T, devs []testDev, kill ...string) string {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { // registered first, so it runs after the devices are closed
		if err := leakcheck.Verify(0, ignore); err != nil {
			t.Errorf("goroutines left behind: %v", err)
		}
	})
	parts := softhsmtest.DefaultPartitions()
	for i := range parts {
		parts[i].PIN = checkPIN
	}
	var keys []softhsmtest.KeySpec
	for _, k := range softhsmtest.DefaultKeys() {
		if k.Label == "ec-key" || k.Label == "rsa-key" {
			keys = append(keys, k)
		}
	}
	var specs []softhsmtest.DeviceSpec
	for _, d := range devs {
		s := softhsmtest.DeviceSpec{Name: d.name, Region: d.region}
		if d.region != "eastus" {
			s.Delay = 2 * time.Millisecond
		}
		if d.differentKey != "" {
			s.DifferentKeys = []string{d.differentKey}
		}
		if d.wrongPIN != "" {
			s.PINOverride = map[string]string{d.wrongPIN: "other-PIN-66021"}
		}
		specs = append(specs, s)
	}
	opts := softhsmtest.Options{Devices: specs, Partitions: parts, Keys: keys}
	for _, d := range devs {
		if d.differentKey == "aes-key" { // secret keys only where a test looks at them
			opts.SecretKeys = softhsmtest.DefaultSecretKeys()
		}
	}
	topo := harnesstest.Start(t, opts)
	path := filepath.Join(t.TempDir(), "hsm-ha.yaml")
	require.NoError(t, topo.WriteConfig(path, softhsmtest.ConfigOptions{PolicyYAML: "init_timeout: 3s"}))
	for _, n := range kill {
		require.NoError(t, topo.Device(n).Kill())
	}
	return path
}

func codes(fs []finding) []string {
	out := []string{}
	for _, f := range fs {
		s := f.Code
		for _, part := range []string{f.Device, f.Partition, f.Key} {
			if part != "" {
				s += " " + part
			}
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestCheckDevices runs `check` in-process against real devices, once for each verdict, with --json and
// without.
func TestCheckDevices(t *testing.T) {
	tests := []struct {
		name     string
		devs     []testDev
		kill     []string
		args     []string
		code     int
		problems []string // code, device, partition, key of each problem, sorted
		advice   []string // the same for advice
		human    []string // in the human report
		check    func(t *testing.T, res *checkResult)
	}{
		{name: "healthy", devs: fourDevices, code: 0, problems: []string{}, advice: []string{},
			human: []string{"Verdict: OK", "payments/ec-key  EC 256 (EC_P256)  consistent", "ok (1 C_Login)"},
			check: func(t *testing.T, res *checkResult) {
				for _, d := range res.Report.Devices {
					assert.True(t, d.Reachable, d.Name)
					assert.NotNil(t, d.Latency, d.Name)
				}
			}},
		{name: "one device killed", devs: fourDevices, kill: []string{"eastus-2"}, code: 1,
			problems: []string{"device_unreachable eastus-2"}, advice: []string{"local_pair_incomplete"},
			human: []string{"eastus-2  eastus  0     UNREACHABLE", "unreachable [device_down]", "only 1 of the 2 devices in local_region eastus is reachable"},
			check: func(t *testing.T, res *checkResult) {
				d := res.Report.Devices[1]
				assert.Equal(t, "eastus-2", d.Name)
				assert.False(t, d.Reachable)
				assert.Equal(t, "device_down", d.ErrorClass)
			}},
		{name: "key different on one device", code: 1,
			devs: []testDev{{name: "eastus-1", region: "eastus"}, {name: "eastus-2", region: "eastus", differentKey: "ec-key"},
				{name: "westus-1", region: "westus"}, {name: "westus-2", region: "westus"}},
			problems: []string{"key_different eastus-2 ledger ec-key", "key_different eastus-2 payments ec-key"}, advice: []string{},
			human: []string{"payments/ec-key  EC 256 (EC_P256)  MISMATCH", "eastus-2 (EC_P256): DIFFERENT, excluded for this key",
				"payments/ec-key on eastus-2 is a different key"},
			check: func(t *testing.T, res *checkResult) {
				k := res.Report.Partitions[0].Keys[0]
				require.Equal(t, "ec-key", k.Label)
				assert.NotEqual(t, k.Fingerprint, k.Devices[1].Fingerprint)
				assert.Equal(t, k.Fingerprint, k.Devices[0].Fingerprint, "the majority is the reference")
			}},
		{name: "secret key different on one device", code: 1,
			devs: []testDev{{name: "eastus-1", region: "eastus"}, {name: "eastus-2", region: "eastus"},
				{name: "westus-1", region: "westus", differentKey: "aes-key"}, {name: "westus-2", region: "westus"}},
			problems: []string{"key_different westus-1 ledger aes-key", "key_different westus-1 payments aes-key"}, advice: []string{},
			human: []string{"payments/aes-key  AES 256 (AES_256)  MISMATCH", "payments/hmac-key  HMAC 256 (HMAC_SHA256)  consistent",
				"westus-1 (AES_256): DIFFERENT, excluded for this key", "payments/aes-key on westus-1 is a different key (check value"},
			check: func(t *testing.T, res *checkResult) {
				k := res.Report.Partitions[0].SecretKeys[0]
				require.Equal(t, "aes-key", k.Label)
				assert.Len(t, k.Fingerprint, 16, "a 64-bit check value")
				assert.NotEqual(t, k.Fingerprint, k.Devices[2].Fingerprint)
				assert.Equal(t, k.Fingerprint, k.Devices[3].Fingerprint, "the majority is the reference")
				assert.Equal(t, inspection.KeyDifferent, k.Devices[2].Status)
			}},
		{name: "wrong PIN on one device", code: 1,
			devs: []testDev{{name: "eastus-1", region: "eastus"}, {name: "eastus-2", region: "eastus"},
				{name: "westus-1", region: "westus", wrongPIN: "payments"}, {name: "westus-2", region: "westus"}},
			problems: []string{"login_failed westus-1 payments"}, advice: []string{},
			human: []string{"FAILED (1 C_Login, not retried)", "CKR_PIN_INCORRECT", "login to partition payments on westus-1 failed"},
			check: func(t *testing.T, res *checkResult) {
				for _, d := range res.Report.Devices {
					for _, p := range d.Partitions {
						assert.EqualValues(t, 1, p.LoginAttempts, "%s/%s: exactly one C_Login", d.Name, p.Name)
					}
				}
				p := res.Report.Devices[2].Partitions[0]
				assert.Equal(t, "payments", p.Name)
				assert.False(t, p.LoggedIn)
				assert.Equal(t, "credential", p.ErrorClass)
			}},
		{name: "single local device", code: 0, problems: []string{}, advice: []string{"local_pair_incomplete"},
			devs:  []testDev{{name: "eastus-1", region: "eastus"}, {name: "westus-1", region: "westus"}, {name: "westus-2", region: "westus"}},
			human: []string{"only 1 device is configured in local_region eastus (eastus-1)", "Verdict: OK"}},
		{name: "no DR", code: 0, problems: []string{}, advice: []string{"no_dr"},
			devs:  []testDev{{name: "eastus-1", region: "eastus"}, {name: "eastus-2", region: "eastus"}},
			human: []string{"there is no DR"}},
		{name: "many replicas on tokens without a session limit", devs: fourDevices, args: []string{"--replicas", "100000"},
			code: 0, problems: []string{}, advice: []string{},
			human: []string{"Session budget: 100000 replica(s)", "largest replica count that fits every token: no limit"},
			check: func(t *testing.T, res *checkResult) {
				assert.Nil(t, res.Budget.MaxReplicas)
				require.Len(t, res.Budget.Tokens, 8)
				for _, tb := range res.Budget.Tokens {
					assert.Equal(t, inspection.SessionsNoLimit, tb.Max.Kind, "SoftHSM reports CK_EFFECTIVELY_INFINITE")
					assert.Equal(t, 17*100000, tb.Needed)
					assert.True(t, tb.Fits)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := checkDevices(t, tt.devs, tt.kill...)
			var out, errOut bytes.Buffer
			code := run(append([]string{"check", "--config", cfg, "--json"}, tt.args...), &out, &errOut)
			require.Equal(t, tt.code, code, "stderr: %s\nstdout: %s", errOut.String(), out.String())
			var res checkResult
			require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
			assert.Equal(t, tt.code, res.ExitCode)
			assert.Equal(t, map[int]string{0: "ok", 1: "problems"}[tt.code], res.Verdict)
			assert.Equal(t, tt.problems, codes(res.Problems))
			assert.Equal(t, tt.advice, codes(res.Advice))
			if tt.check != nil {
				tt.check(t, &res)
			}
			all := out.String() + errOut.String()

			out.Reset()
			errOut.Reset()
			require.Equal(t, tt.code, run(append([]string{"check", "--config", cfg}, tt.args...), &out, &errOut), errOut.String())
			t.Logf("report:\n%s", out.String())
			for _, s := range tt.human {
				assert.Contains(t, out.String(), s)
			}
			all += out.String() + errOut.String()
			assert.NotContains(t, all, checkPIN, "the PIN is never printed")
			assert.NotContains(t, all, "other-PIN-66021")
		})
	}
}

// TestCheckUsage: usage and config errors exit 2 before any device is touched.
func TestCheckUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("local_region: eastus\nfrobnicate: 1\n"), 0o600))
	noPIN := filepath.Join(dir, "nopin.yaml")
	require.NoError(t, os.WriteFile(noPIN, []byte("local_region: eastus\ndevices:\n  - {name: a, region: eastus, module: "+
		os.Args[0]+"}\npartitions:\n  - {name: p, token_label: p, pin_env: CHECK_TEST_UNSET_PIN}\n"), 0o600))
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"no config", []string{"check"}, 2, "--config FILE is required"},
		{"stray argument", []string{"check", "--config", bad, "extra"}, 2, "--config FILE is required"},
		{"bad flag", []string{"check", "--nope"}, 2, "flag provided but not defined"},
		{"no replicas", []string{"check", "--config", bad, "--replicas", "0"}, 2, "--replicas must be at least 1"},
		{"missing file", []string{"check", "--config", filepath.Join(dir, "none.yaml")}, 2, "no such file"},
		{"unknown key", []string{"check", "--config", bad}, 2, "frobnicate"},
		{"PIN variable not set", []string{"check", "--config", noPIN}, 2, "CHECK_TEST_UNSET_PIN is not set"},
		{"help", []string{"check", "--help"}, 0, "usage: hsm-ha-proxy check"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			assert.Equal(t, tt.code, run(tt.args, &out, &errOut))
			assert.Contains(t, out.String()+errOut.String(), tt.out)
		})
	}
}

// TestCheckBinaryExitCode execs the built binary once against devices with one killed, for the exit status
// a script sees, and once with a config error.
func TestCheckBinaryExitCode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	cfg := checkDevices(t, fourDevices, "westus-1")
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"check", "--config", cfg}, 1, "westus-1 is unreachable"},
		{[]string{"check", "--config", cfg + ".missing"}, 2, "no such file"},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%s", out)
		assert.Equal(t, tc.code, ee.ExitCode(), "%s", out)
		assert.Contains(t, string(out), tc.out)
		assert.NotContains(t, string(out), checkPIN)
	}
}

// TestCheckTokenFit is the session arithmetic: replicas × (pool + login session) against the token's max less
// what others hold.
func TestCheckTokenFit(t *testing.T) {
	n := func(v uint64) inspection.SessionCount {
		return inspection.SessionCount{Kind: inspection.SessionsCount, Value: v}
	}
	noLimit := inspection.SessionCount{Kind: inspection.SessionsNoLimit}
	unknown := inspection.SessionCount{Kind: inspection.SessionsUnknown}
	tests := []struct {
		name                string
		perReplica, replica int
		max, count          inspection.SessionCount
		own                 int
		wantMax             int // -1: no limit
		fits                bool
		inUse               inspection.SessionCount
	}{
		{"no limit", 17, 1000, noLimit, unknown, 0, -1, true, unknown},
		{"limit not stated", 17, 1000, unknown, n(3), 2, -1, true, n(1)},
		{"fits exactly", 17, 6, n(102), n(2), 2, 6, true, n(0)},
		{"one too many", 17, 7, n(102), n(2), 2, 6, false, n(0)},
		{"others hold sessions", 17, 5, n(102), n(20), 2, 4, false, n(18)},
		{"unknown count counts as none in use", 17, 6, n(102), unknown, 0, 6, true, unknown},
		{"own sessions are not others'", 10, 1, n(10), n(2), 2, 1, true, n(0)},
		{"others hold them all", 10, 1, n(10), n(12), 2, 0, false, n(10)},
		{"others hold more than the max", 10, 1, n(10), n(50), 0, 0, false, n(50)},
		{"small token: pool capped by the library", 4, 2, n(4), unknown, 0, 1, false, unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tokenFit(tt.perReplica, tt.replica, tt.max, tt.count, tt.own)
			assert.Equal(t, tt.fits, got.Fits)
			assert.Equal(t, tt.perReplica*tt.replica, got.Needed)
			assert.Equal(t, tt.inUse, got.InUse)
			if tt.wantMax < 0 {
				assert.Nil(t, got.MaxReplicas)
			} else if assert.NotNil(t, got.MaxReplicas) {
				assert.Equal(t, tt.wantMax, *got.MaxReplicas)
			}
		})
	}
}

// healthyReport is two reachable local devices and two DR ones, two partitions, consistent keys.
func healthyReport() *inspection.Report {
	rep := &inspection.Report{LocalRegion: "eastus", SessionPoolSize: 16}
	for i, n := range []string{"eastus-1", "eastus-2", "westus-1", "westus-2"} {
		local := i < 2
		d := inspection.DeviceReport{Name: n, Region: "westus", Tier: 1, Reachable: true,
			Latency: &inspection.LatencyReport{Samples: 5, Min: 20 * time.Millisecond, Median: 21 * time.Millisecond}}
		if local {
			d.Region, d.Tier, d.Local = "eastus", 0, true
			d.Latency = &inspection.LatencyReport{Samples: 5, Min: 200 * time.Microsecond, Median: 250 * time.Microsecond}
		}
		for _, p := range []string{"payments", "ledger"} {
			d.Partitions = append(d.Partitions, inspection.DevicePartition{Name: p, TokenFound: true, LoggedIn: true,
				LoginAttempts: 1, Keys: 1, SessionsPerClient: 17, Token: &inspection.TokenInfo{Label: p, Serial: n + "-" + p,
					MaxSessions: inspection.SessionCount{Kind: inspection.SessionsNoLimit}, Sessions: inspection.SessionCount{Kind: inspection.SessionsUnknown}}})
		}
		rep.Devices = append(rep.Devices, d)
	}
	for _, p := range []string{"payments", "ledger"} {
		k := inspection.KeyReport{Label: "ec-key", KeyType: "EC", Bits: 256, Algorithm: "EC_P256", Fingerprint: "aa", Consistent: true}
		for _, d := range rep.Devices {
			k.Devices = append(k.Devices, inspection.KeyOnDevice{Device: d.Name, Status: inspection.KeyMatch, Fingerprint: "aa"})
		}
		rep.Partitions = append(rep.Partitions, inspection.PartitionReport{Name: p, Keys: []inspection.KeyReport{k}})
	}
	return rep
}

// TestCheckJudge: every problem and every piece of advice, from reports built by hand.
func TestCheckJudge(t *testing.T) {
	tests := []struct {
		name     string
		edit     func(r *inspection.Report)
		replicas int
		problems []string
		advice   []string
	}{
		{"healthy", func(r *inspection.Report) {}, 1, []string{}, []string{}},
		{"session budget exceeded", func(r *inspection.Report) {
			r.Devices[0].Partitions[1].Token.MaxSessions = inspection.SessionCount{Kind: inspection.SessionsCount, Value: 40}
			r.Devices[0].Partitions[1].Token.Sessions = inspection.SessionCount{Kind: inspection.SessionsCount, Value: 10}
			r.Devices[0].Partitions[1].Token.OwnSessions = 2
		}, 2, []string{"session_budget_exceeded eastus-1 ledger"}, []string{}},
		{"session budget that fits", func(r *inspection.Report) {
			r.Devices[0].Partitions[1].Token.MaxSessions = inspection.SessionCount{Kind: inspection.SessionsCount, Value: 40}
		}, 2, []string{}, []string{}},
		{"unreachable", func(r *inspection.Report) {
			r.Devices[3].Reachable, r.Devices[3].Error = false, "gone"
		}, 1, []string{"device_unreachable westus-2"}, []string{}},
		{"login failed", func(r *inspection.Report) {
			p := &r.Devices[2].Partitions[0]
			p.LoggedIn, p.ErrorClass, p.Error = false, "credential", "C_Login: CKR_PIN_INCORRECT"
		}, 1, []string{"login_failed westus-1 payments"}, []string{}},
		{"partition error", func(r *inspection.Report) {
			p := &r.Devices[2].Partitions[0]
			p.LoggedIn, p.ErrorClass, p.Error = false, "busy", "C_FindObjects: CKR_FUNCTION_FAILED"
		}, 1, []string{"partition_error westus-1 payments"}, []string{}},
		{"key missing", func(r *inspection.Report) {
			k := &r.Partitions[1].Keys[0]
			k.Consistent, k.Devices[0].Status, k.Devices[0].Fingerprint = false, inspection.KeyMissing, ""
		}, 1, []string{"key_missing eastus-1 ledger ec-key"}, []string{}},
		{"local pair down to one", func(r *inspection.Report) {
			r.Devices[1].Reachable = false
		}, 1, []string{"device_unreachable eastus-2"}, []string{"local_pair_incomplete"}},
		{"DR faster than local", func(r *inspection.Report) {
			r.Devices[0].Latency.Median, r.Devices[1].Latency.Median = 30*time.Millisecond, 31*time.Millisecond
			r.Devices[2].Latency.Median = 300 * time.Microsecond
		}, 1, []string{}, []string{"dr_faster_than_local westus-1"}},
		{"DR as fast as local is noise", func(r *inspection.Report) {
			r.Devices[2].Latency.Median = 200 * time.Microsecond
		}, 1, []string{}, []string{}},
		{"remote device in tier 0", func(r *inspection.Report) {
			r.Devices[3].Tier, r.Devices[3].TierOverride = 0, true
		}, 1, []string{}, []string{"remote_device_in_tier0 westus-2"}},
		{"local device out of tier 0", func(r *inspection.Report) {
			r.Devices[1].Tier, r.Devices[1].TierOverride = 1, true
		}, 1, []string{}, []string{"local_device_not_in_tier0 eastus-2"}},
		{"single DR device", func(r *inspection.Report) {
			r.Devices = r.Devices[:3]
			for i := range r.Partitions {
				r.Partitions[i].Keys[0].Devices = r.Partitions[i].Keys[0].Devices[:3]
			}
		}, 1, []string{}, []string{"dr_single_device westus-1"}},
		{"partition not on every device", func(r *inspection.Report) {
			p := &r.Devices[3].Partitions[1]
			p.TokenFound, p.LoggedIn, p.Token, p.Error = false, false, nil, "token not found"
			r.Partitions[1].Keys[0].Devices[3].Status = inspection.KeyUnchecked
		}, 1, []string{}, []string{"partition_not_on_every_device westus-2 ledger"}},
		{"same token behind two devices", func(r *inspection.Report) {
			r.Devices[1].Partitions[0].Token.Serial = r.Devices[0].Partitions[0].Token.Serial
		}, 1, []string{}, []string{"same_token_on_two_devices eastus-2 payments"}},
		{"partition without keys", func(r *inspection.Report) {
			r.Partitions[0].Keys = nil
		}, 1, []string{}, []string{"partition_without_keys payments"}},
		{"session limit unknown", func(r *inspection.Report) {
			r.Devices[2].Partitions[0].Token.MaxSessions = inspection.SessionCount{Kind: inspection.SessionsUnknown}
		}, 1, []string{}, []string{"session_limit_unknown westus-1 payments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := healthyReport()
			tt.edit(rep)
			res := judge("hsm-ha.yaml", rep, tt.replicas)
			assert.Equal(t, tt.problems, codes(res.Problems))
			assert.Equal(t, tt.advice, codes(res.Advice))
			want := 0
			if len(tt.problems) > 0 {
				want = 1
			}
			assert.Equal(t, want, res.ExitCode)
			var b bytes.Buffer
			printCheck(&b, res) // every finding reaches the human report
			for _, f := range append(res.Problems, res.Advice...) {
				assert.Contains(t, b.String(), f.Message)
			}
			if strings.Contains(tt.name, "budget exceeded") {
				assert.Contains(t, b.String(), "at most 1 replica(s) fit")
			}
		})
	}
}

// TestCheckSessionsText: a token's sessions as the device table shows them.
func TestCheckSessionsText(t *testing.T) {
	n := func(v uint64) inspection.SessionCount {
		return inspection.SessionCount{Kind: inspection.SessionsCount, Value: v}
	}
	tests := []struct {
		open, max inspection.SessionCount
		want      string
	}{
		{inspection.SessionCount{Kind: inspection.SessionsUnknown}, inspection.SessionCount{Kind: inspection.SessionsNoLimit}, "unknown/no limit"},
		{n(3), n(1024), "3/1024 (1021 free)"},
		{n(3), inspection.SessionCount{Kind: inspection.SessionsNoLimit}, "3/no limit"},
		{inspection.SessionCount{Kind: inspection.SessionsUnknown}, n(64), "unknown/64"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, sessionsText(&inspection.TokenInfo{Sessions: tt.open, MaxSessions: tt.max}))
	}
}
