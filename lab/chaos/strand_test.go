package chaos

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/harnesstest"
	"github.com/pkcs11-ha/pkcs11-ha/softhsm-test/leakcheck"
)

// TestStrandingPerKill measures, on p11-kit itself (miekg/pkcs11, no pkcs11ha), how often a SIGKILLed
// `p11-kit server` leaves client calls blocked for good, for 8 signing workers
//
//   - sharing one p11-kit-client instance (8 calls in flight on one connection), and
//   - each on an instance of its own (8 loads of p11-kit-client.so: one call in flight per connection).
//
// Each kill cycle loads fresh instances, signs for 200 ms, kills the server and counts the calls that have
// not returned 3 s later; they are left blocked (finalising under them can abort the process) and allowed
// by the leak check. Run with CHAOS_STRAND=<kills per mode>:
//
//	CHAOS_STRAND=50 go test -count=1 -run TestStrandingPerKill -v ./lab/chaos/
func TestStrandingPerKill(t *testing.T) {
	kills, _ := strconv.Atoi(os.Getenv("CHAOS_STRAND"))
	if kills <= 0 {
		t.Skip("set CHAOS_STRAND=<kills per mode> to measure")
	}
	topo := harnesstest.Start(t, softhsmtest.Options{Devices: []softhsmtest.DeviceSpec{{Name: "eastus-1", Region: "eastus"}}})
	dev := topo.Devices[0]
	pin := topo.Partitions[0].PIN
	for _, mode := range []struct {
		name      string
		instances int
	}{{"shared instance", 1}, {"one instance per worker", 8}} {
		stranding, calls, worst := 0, 0, 0
		for k := range kills {
			n, err := strandOnce(t, dev, pin, mode.instances, 8)
			if err != nil {
				t.Fatalf("%s, kill %d: %v", mode.name, k+1, err)
			}
			if n > 0 {
				stranding++
			}
			calls += n
			worst = max(worst, n)
			leakcheck.Allow(n)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = dev.Start(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("STRAND %s: %d of %d kills stranded calls (%.0f%%), %d calls in all (%.2f per kill, at most %d)",
			mode.name, stranding, kills, 100*float64(stranding)/float64(kills), calls, float64(calls)/float64(kills), worst)
	}
}

// strandOnce loads `instances` fresh p11-kit-client instances, runs `workers` signing loops spread over them,
// kills the device and returns how many calls are still blocked 3 s later.
func strandOnce(t *testing.T, dev *softhsmtest.Device, pin string, instances, workers int) (int, error) {
	type inst struct {
		c    *pkcs11.Ctx
		slot uint
		key  pkcs11.ObjectHandle
	}
	var ins []inst
	for range instances {
		for k, v := range dev.ModuleEnv {
			t.Setenv(k, v) // read by C_GetFunctionList and C_Initialize
		}
		c := pkcs11.New(dev.ModulePath)
		if c == nil {
			return 0, fmt.Errorf("cannot load %s", dev.ModulePath)
		}
		if err := c.Initialize(); err != nil {
			return 0, err
		}
		slots, err := c.GetSlotList(true)
		if err != nil {
			return 0, fmt.Errorf("slots: %w", err)
		}
		slot, found := uint(0), false
		for _, sl := range slots {
			if ti, err := c.GetTokenInfo(sl); err == nil && strings.TrimSpace(ti.Label) == "payments" {
				slot, found = sl, true
			}
		}
		if !found {
			return 0, fmt.Errorf("no payments token among %d slots", len(slots))
		}
		s, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			return 0, err
		}
		if err := c.Login(s, pkcs11.CKU_USER, pin); err != nil && err != pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
			return 0, err
		}
		if err := c.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ec-key")}); err != nil {
			return 0, err
		}
		hs, _, err := c.FindObjects(s, 1)
		_ = c.FindObjectsFinal(s)
		if err != nil || len(hs) == 0 {
			return 0, fmt.Errorf("key: %v", err)
		}
		ins = append(ins, inst{c: c, slot: slot, key: hs[0]})
	}
	var inCall atomic.Int32
	var stop atomic.Bool
	var wg sync.WaitGroup
	digest := make([]byte, 32)
	for w := range workers {
		in := ins[w%len(ins)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := in.c.OpenSession(in.slot, pkcs11.CKF_SERIAL_SESSION)
			if err != nil {
				return
			}
			for !stop.Load() {
				inCall.Add(1)
				err := in.c.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, in.key)
				if err == nil {
					_, err = in.c.Sign(s, digest)
				}
				inCall.Add(-1)
				if err != nil {
					return // the server is gone: this worker's call returned
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := dev.Kill(); err != nil {
		return 0, err
	}
	stop.Store(true)
	deadline := time.Now().Add(3 * time.Second)
	for inCall.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	n := int(inCall.Load())
	if n == 0 {
		wg.Wait()
		for _, in := range ins {
			_ = in.c.Finalize()
			in.c.Destroy()
		}
	}
	return n, nil
}
