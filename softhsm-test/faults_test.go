package softhsmtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Generous bounds: the machine is shared and small; the point is "quickly" versus "blocked".
const (
	quick   = 3 * time.Second
	blocked = 200 * time.Millisecond
)

func requireGone(t *testing.T, pid int) {
	t.Helper()
	assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "process %d still exists", pid)
}

func TestKillAndRestart(t *testing.T) {
	topo := startT(t, smallOptions(DefaultTopology(0)[:2]...))
	d, other := topo.Device("eastus-1"), topo.Device("eastus-2")
	s := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
	_, err := s.signECDSA()
	require.NoError(t, err)
	so := loginAndFind(t, loadModule(t, other), "payments", "1234", "ec-key")

	pid := d.PID()
	members, err := groupMembers(pid)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(members), 2, "server and one p11-kit-remote per connection")
	require.NoError(t, d.Kill())
	assert.False(t, d.Running())
	assert.Zero(t, d.PID())
	for _, m := range members {
		requireGone(t, m) // the server is reaped by us, its p11-kit-remote children by init
	}
	require.NoError(t, d.Kill(), "killing a dead device is a no-op")

	t0 := time.Now()
	_, err = s.signECDSA()
	assert.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), ckr(err), "%v", err)
	assert.Less(t, time.Since(t0), quick)
	_, err = so.signECDSA()
	assert.NoError(t, err, "other devices are unaffected")

	require.Error(t, d.Pause(), "a dead device cannot be paused")

	// new clients are refused as by a dead server: C_Initialize succeeds without any slot
	assert.NoFileExists(t, d.Socket)
	fresh := loadModule(t, d)
	slots, err := fresh.GetSlotList(true)
	require.NoError(t, err)
	assert.Empty(t, slots)

	require.NoError(t, d.Restart(context.Background()))
	assert.True(t, d.Running())
	assert.NotEqual(t, pid, d.PID())
	_, err = s.signECDSA()
	assert.Error(t, err, "the old instance stays broken until re-initialised")
	s2 := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
	sig, err := s2.signECDSA()
	require.NoError(t, err)
	verifyECDSA(t, topo.Keys["ec-key"].Public(), sig)

	// Restart of a running device, then Stop and Start
	pid = d.PID()
	require.NoError(t, d.Restart(context.Background()))
	requireGone(t, pid)
	pid = d.PID()
	require.NoError(t, d.Stop())
	requireGone(t, pid)
	require.NoError(t, d.Start(context.Background()))
	require.NoError(t, d.Start(context.Background()), "starting a running device is a no-op")
	s3 := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
	_, err = s3.signECDSA()
	require.NoError(t, err)
}

func TestPauseResume(t *testing.T) {
	topo := startT(t, smallOptions(DefaultTopology(0)[0]))
	d := topo.Device("eastus-1")
	s := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")

	require.NoError(t, d.Pause())
	assert.True(t, d.Paused())
	assert.True(t, d.Running())
	res := goSign(s)
	select {
	case r := <-res:
		t.Fatalf("sign returned while the device is paused: %v", r.err)
	case <-time.After(blocked):
	}
	require.NoError(t, d.Resume())
	assert.False(t, d.Paused())
	select {
	case r := <-res:
		require.NoError(t, r.err)
		verifyECDSA(t, topo.Keys["ec-key"].Public(), r.sig)
	case <-time.After(10 * time.Second):
		t.Fatal("sign did not return after Resume")
	}

	// Kill works on a paused device too
	require.NoError(t, d.Pause())
	pid := d.PID()
	require.NoError(t, d.Kill())
	requireGone(t, pid)
	_, err := s.signECDSA()
	assert.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), ckr(err), "%v", err)
}

func TestRelayFaults(t *testing.T) {
	topo := startT(t, smallOptions(DefaultTopology(0)[0]))
	d := topo.Device("eastus-1")
	s := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
	require.Equal(t, 1, d.Connections())
	parent := t // modules must outlive the subtest that loads them

	t.Run("HangPass", func(t *testing.T) {
		require.NoError(t, d.Hang())
		res := goSign(s)
		select {
		case r := <-res:
			t.Fatalf("sign returned while the relay hangs: %v", r.err)
		case <-time.After(blocked):
		}
		require.NoError(t, d.Pass())
		select {
		case r := <-res:
			require.NoError(t, r.err)
		case <-time.After(10 * time.Second):
			t.Fatal("sign did not return after Pass")
		}
	})

	t.Run("Delay", func(t *testing.T) {
		require.NoError(t, d.SetDelay(20*time.Millisecond, 20*time.Millisecond))
		r := <-goSign(s)
		require.NoError(t, r.err)
		assert.GreaterOrEqual(t, r.dur, 40*time.Millisecond)
		t.Logf("sign with 20 ms each way: %v", r.dur)
		require.NoError(t, d.SetDelay(0, 0))
		r = <-goSign(s)
		require.NoError(t, r.err)
		t.Logf("sign without delay: %v", r.dur)
	})

	t.Run("Down", func(t *testing.T) {
		require.NoError(t, d.Down())
		r := <-goSign(s)
		assert.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), ckr(r.err), "%v", r.err)
		assert.Less(t, r.dur, quick)
		// a new instance cannot reach the device either
		p, err := tryLoadModule(d)
		if err == nil {
			_, err = openSession(p, "payments")
			finalizeModule(t, d, p)
		}
		assert.Error(t, err)
		require.NoError(t, d.Pass())
		s = loginAndFind(t, loadModule(parent, d), "payments", "1234", "ec-key")
		_, err = s.signECDSA()
		require.NoError(t, err)
	})

	t.Run("Reset", func(t *testing.T) {
		require.NoError(t, d.Reset())
		_, err := s.signECDSA()
		assert.Error(t, err)
		t.Logf("after Reset: %v", err)
		s = loginAndFind(t, loadModule(parent, d), "payments", "1234", "ec-key")
		_, err = s.signECDSA()
		require.NoError(t, err)
	})
}

func TestKeyAndPINFaults(t *testing.T) {
	devs := DefaultTopology(0)
	devs[1].MissingKeys = []string{"rsa-key"}
	devs[2].DifferentKeys = []string{"ec-key"}
	devs[3].PINOverride = map[string]string{"payments": "9999"}
	opts := Options{Devices: devs, Partitions: DefaultPartitions()[:1], Keys: DefaultKeys()[:2]}
	topo := startT(t, opts)
	good, missing, different, pin := topo.Devices[0], topo.Devices[1], topo.Devices[2], topo.Devices[3]

	assert.Equal(t, topo.Keys, good.Keys)
	assert.NotContains(t, missing.Keys, "rsa-key")
	assert.NotEqual(t, topo.Keys["ec-key"].Public(), different.Keys["ec-key"].Public())
	assert.Equal(t, "9999", pin.PINs["payments"])

	{
		p := loadModule(t, missing)
		s := loginAndFind(t, p, "payments", "1234", "ec-key")
		objs, err := findObjects(p, s.sh, pkcs11.CKO_PRIVATE_KEY, "rsa-key")
		require.NoError(t, err)
		assert.Empty(t, objs)
		objs, err = findObjects(p, s.sh, pkcs11.CKO_PUBLIC_KEY, "rsa-key")
		require.NoError(t, err)
		assert.Empty(t, objs)
	}
	{
		p := loadModule(t, different)
		s := loginAndFind(t, p, "payments", "1234", "ec-key")
		assert.NotEqual(t, wantECPoint(t, topo.Keys["ec-key"].Public()), ecPoint(t, p, s.sh, "ec-key"))
		assert.Equal(t, wantECPoint(t, different.Keys["ec-key"].Public()), ecPoint(t, p, s.sh, "ec-key"))
		sig, err := s.signECDSA()
		require.NoError(t, err)
		verifyECDSA(t, different.Keys["ec-key"].Public(), sig)
		objs, err := findObjects(p, s.sh, pkcs11.CKO_PRIVATE_KEY, "rsa-key")
		require.NoError(t, err)
		assert.Len(t, objs, 1, "only ec-key differs")
	}
	{
		p := loadModule(t, pin)
		sh, err := openSession(p, "payments")
		require.NoError(t, err)
		err = p.Login(sh, pkcs11.CKU_USER, "1234")
		assert.Equal(t, uint(pkcs11.CKR_PIN_INCORRECT), ckr(err), "%v", err)
		s := loginAndFind(t, p, "payments", "9999", "ec-key")
		sig, err := s.signECDSA()
		require.NoError(t, err)
		verifyECDSA(t, topo.Keys["ec-key"].Public(), sig)
	}

	// the config keeps the partition's PIN for every device
	data, err := topo.ConfigYAML(ConfigOptions{})
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(data), `pin: "1234"`))
	assert.NotContains(t, string(data), "9999")
}

func TestInProcessDevices(t *testing.T) {
	opts := Options{
		Devices: []DeviceSpec{
			{Name: "local-1", Region: "eastus", InProcess: true},
			{Name: "local-2", Region: "eastus", InProcess: true, Delay: time.Millisecond},
		},
		Partitions: DefaultPartitions()[:1],
		Keys:       []KeySpec{DefaultKeys()[1], DefaultKeys()[3]},
	}
	topo := startT(t, opts)
	serials := map[string]bool{}
	for _, d := range topo.Devices {
		assert.Empty(t, d.Socket)
		assert.Empty(t, d.ServerSocket)
		assert.Equal(t, filepath.Join(d.Dir, "libsofthsm2-"+d.Name+".so"), d.ModulePath)
		assert.Equal(t, map[string]string{"SOFTHSM2_CONF": d.ConfPath}, d.ModuleEnv)
		assert.False(t, d.Running())

		p := loadModule(t, d)
		serial, err := tokenSerial(p, "payments")
		require.NoError(t, err)
		assert.Equal(t, d.Serials["payments"], serial, "each copy of the module sees its own device")
		serials[serial] = true

		s := loginAndFind(t, p, "payments", "1234", "ed-key")
		msg := []byte("an Ed25519 message")
		require.NoError(t, p.SignInit(s.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEDDSA, nil)}, s.key))
		sig, err := p.Sign(s.sh, msg)
		require.NoError(t, err)
		assert.True(t, verifyEd25519(topo.Keys["ed-key"].Public(), msg, sig), "Ed25519 signature")

		for name, verb := range map[string]func() error{
			"Kill": d.Kill, "Pause": d.Pause, "Resume": d.Resume, "Stop": d.Stop, "Pass": d.Pass,
			"Hang": d.Hang, "Down": d.Down, "Reset": d.Reset,
			"Restart":  func() error { return d.Restart(context.Background()) },
			"SetDelay": func() error { return d.SetDelay(time.Millisecond, time.Millisecond) },
		} {
			err := verb()
			require.Error(t, err, name)
			assert.Contains(t, err.Error(), "not supported for in-process device", name)
		}
	}
	assert.Len(t, serials, 2)
}

func TestCloseReapsEverything(t *testing.T) {
	opts := smallOptions(DefaultTopology(time.Millisecond)...)
	topo, err := Start(context.Background(), opts)
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = topo.Close()
		}
	})
	require.DirExists(t, topo.Dir)

	var pids []int
	for _, d := range topo.Devices {
		p, err := tryLoadModule(d) // one p11-kit-remote per device besides the server
		require.NoError(t, err)
		_, err = openSession(p, "payments")
		require.NoError(t, err)
		members, err := groupMembers(d.PID())
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(members), 2)
		pids = append(pids, members...)
		defer finalizeModule(t, d, p) // after Close: the connection is gone, C_Finalize returns at once
	}
	require.NoError(t, topo.Device("eastus-2").Pause(), "Close must also kill a paused device")
	require.NoError(t, topo.Device("westus-1").Hang())

	require.NoError(t, topo.Close())
	closed = true
	for _, pid := range pids {
		requireGone(t, pid)
	}
	for _, d := range topo.Devices {
		assert.False(t, d.Running())
		assert.NoFileExists(t, d.Socket)
		assert.NoFileExists(t, d.ServerSocket)
	}
	assert.NoDirExists(t, topo.Dir, "Start created the directory, Close removes it")
	require.NoError(t, topo.Close(), "Close is idempotent")
	require.Error(t, topo.Devices[0].Start(context.Background()), "a closed topology cannot be restarted")
}

func TestLongDirUsesShortSocketDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	topo := startT(t, Options{Dir: dir, Devices: DefaultTopology(0)[:1], Partitions: DefaultPartitions()[:1],
		Keys: DefaultKeys()[1:2]})
	d := topo.Devices[0]
	assert.True(t, strings.HasPrefix(d.ConfPath, dir))
	assert.False(t, strings.HasPrefix(d.Socket, dir))
	assert.LessOrEqual(t, len(d.Socket), maxSocketPath)
	s := loginAndFind(t, loadModule(t, d), "payments", "1234", "ec-key")
	_, err := s.signECDSA()
	require.NoError(t, err)
	sockDir := filepath.Dir(d.Socket)
	require.NoError(t, topo.Close())
	_, err = os.Stat(sockDir)
	assert.True(t, errors.Is(err, os.ErrNotExist), "socket directory %s removed by Close", sockDir)
	assert.DirExists(t, dir, "a directory given by the caller is left to the caller")
}
