package devicebackend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/errclass"
)

// errCallStuck marks a PKCS#11 call that Inspect left running in the module at its deadline.
var errCallStuck = errors.New("did not return")

// opOpen names the whole of a device's open (C_Initialize to the key listing) in an error; opGetInfo is
// the module's C_GetInfo, which only Inspect calls.
const (
	opOpen    = "open"
	opGetInfo = "C_GetInfo"
)

// releaseAll releases the devices' module references at once (each bounded by timeout).
func releaseAll(devs []*Device, timeout time.Duration) {
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.Close(timeout)
		}()
	}
	wg.Wait()
}

// inspectDevice opens d, reads its module and token information, times it, and returns its report (dr
// completed) and, per partition, the keys the token holds (nil where the partition did not open). Calls
// after the open are bounded by callTimeout.
func inspectDevice(ctx context.Context, s *Settings, d *Device, o inspection.Options, load loadResult,
	callTimeout time.Duration, dr inspection.DeviceReport) (inspection.DeviceReport, []map[string]*KeyObject) {
	openErr := load.err
	if openErr == nil {
		start := time.Now()
		openErr = openBounded(ctx, d, s.Own.InitTimeout, o.OpenTimeout)
		dr.OpenTime = time.Since(start)
	}
	dr.OpenTime += load.took
	if errors.Is(openErr, errCallStuck) {
		dr.Abandoned = append(dr.Abandoned, string(opOpen))
		setErr(&dr.Error, &dr.ErrorClass, openErr)
		for _, p := range d.Parts {
			dr.Partitions = append(dr.Partitions, inspection.DevicePartition{Name: p.Cfg.Name, Error: "not checked: the device did not finish opening"})
		}
		return dr, nil
	}

	var found []tokenAt
	var stuck error
	if in := d.Mod.Current(); in != nil {
		found, stuck = inspectInstance(ctx, d, in, callTimeout, o.LatencySamples, &dr)
	}
	keys := make([]map[string]*KeyObject, len(d.Parts))
	for pi, p := range d.Parts {
		dp := inspection.DevicePartition{Name: p.Cfg.Name, LoginAttempts: p.logins.Load()}
		if i := slices.IndexFunc(found, func(t tokenAt) bool { return p.isToken(t.info) }); i >= 0 {
			own := 0
			st := p.St.Load()
			if st != nil && st.slot == found[i].slot {
				own = 1 + len(st.Pool.Slots) // the login session and the pool's warm one
			}
			dp.TokenFound, dp.Token = true, tokenInfo(found[i].info, own)
			dp.SessionsPerClient = poolSize(s.Own.SessionPoolSize, found[i].info.MaxSessionCount) + 1
		}
		if st := p.St.Load(); st != nil {
			dp.TokenFound, dp.LoggedIn, dp.Keys = true, true, len(st.keys)
			keys[pi] = st.keys
		} else if e := p.openErr.Load(); e != nil && *e != nil {
			setErr(&dp.Error, &dp.ErrorClass, *e)
		} else if openErr != nil {
			setErr(&dp.Error, &dp.ErrorClass, openErr)
		}
		dr.Reachable = dr.Reachable || dp.TokenFound
		dr.Partitions = append(dr.Partitions, dp)
	}
	switch {
	case stuck != nil:
		dr.Reachable = false
		setErr(&dr.Error, &dr.ErrorClass, stuck)
	case !dr.Reachable && openErr != nil:
		setErr(&dr.Error, &dr.ErrorClass, openErr)
	case !dr.Reachable:
		setErr(&dr.Error, &dr.ErrorClass, errclass.DownErr(d.Name, "", errclass.OpTokenInfo, "no configured partition's token is on the device"))
	}
	if !dr.Reachable {
		return dr, nil
	}
	return dr, keys
}

// tokenAt is a token found in a slot.
type tokenAt struct {
	slot uint
	info pkcs11.TokenInfo
}

// inspectInstance reads the module's C_GetInfo and every present token's C_GetTokenInfo, then times
// samples C_GetTokenInfo calls on the first partition's token. It returns the tokens found and the first
// call that did not return within timeout (then it stops there).
func inspectInstance(ctx context.Context, d *Device, in *Instance, timeout time.Duration, samples int, dr *inspection.DeviceReport) ([]tokenAt, error) {
	abandon := func(op string, err error) error {
		if errors.Is(err, errCallStuck) {
			dr.Abandoned = append(dr.Abandoned, string(op))
			return err
		}
		return nil
	}
	info, err := callBounded(ctx, d, in, opGetInfo, timeout, func(c *pkcs11.Ctx) (pkcs11.Info, error) { return c.GetInfo() })
	if err != nil {
		return nil, abandon(opGetInfo, err)
	}
	dr.Library = &inspection.LibraryInfo{
		Manufacturer: info.ManufacturerID, Description: info.LibraryDescription,
		Version: version(info.LibraryVersion), Cryptoki: version(info.CryptokiVersion),
	}
	slots, err := callBounded(ctx, d, in, errclass.OpSlotList, timeout, func(c *pkcs11.Ctx) ([]uint, error) { return c.GetSlotList(true) })
	if err != nil {
		return nil, abandon(errclass.OpSlotList, err)
	}
	var found []tokenAt
	for _, s := range slots {
		ti, err := callBounded(ctx, d, in, errclass.OpTokenInfo, timeout, func(c *pkcs11.Ctx) (pkcs11.TokenInfo, error) { return c.GetTokenInfo(s) })
		if err != nil {
			if stuck := abandon(errclass.OpTokenInfo, err); stuck != nil {
				return found, stuck
			}
			continue
		}
		found = append(found, tokenAt{s, ti})
	}
	// Time the call health probes make, on the token of the first partition found here.
	probe := -1
	for _, p := range d.Parts {
		if i := slices.IndexFunc(found, func(t tokenAt) bool { return p.isToken(t.info) }); i >= 0 {
			probe = i
			break
		}
	}
	if probe < 0 {
		return found, nil
	}
	var took []time.Duration
	for range samples {
		t0 := time.Now()
		_, err := callBounded(ctx, d, in, errclass.OpTokenInfo, timeout, func(c *pkcs11.Ctx) (pkcs11.TokenInfo, error) { return c.GetTokenInfo(found[probe].slot) })
		if err != nil {
			if stuck := abandon(errclass.OpTokenInfo, err); stuck != nil {
				return found, stuck
			}
			break
		}
		took = append(took, time.Since(t0))
	}
	if len(took) > 0 {
		slices.Sort(took)
		dr.Latency = &inspection.LatencyReport{Samples: len(took), Min: took[0], Median: took[len(took)/2], Max: took[len(took)-1]}
	}
	return found, nil
}

// openBounded runs d.open in a goroutine of its own with Open's deadline on a module load
// (policy.init_timeout; Inspect has loaded the module already), and waits at most limit for the whole
// open; past it the open is abandoned, never waited on.
func openBounded(ctx context.Context, d *Device, initTimeout, limit time.Duration) error {
	octx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Open(octx) }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return &errclass.DeviceError{Device: d.Name, Op: opOpen, Class: errclass.ClassDeviceDown,
			Err: fmt.Errorf("%w within %v; left running in the module", errCallStuck, limit)}
	}
}

// loadResult is the outcome of loading a device's module.
type loadResult struct {
	err  error
	took time.Duration
}

// loadBounded loads d's module (or finds it loaded, for a device sharing another's instance) as Open
// does, bounded by initTimeout: a C_Initialize that does not return by then is left running.
func loadBounded(ctx context.Context, d *Device, initTimeout time.Duration) loadResult {
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()
	_, err := d.instanceFor(lctx, false)
	return loadResult{err: err, took: time.Since(start)}
}

// callBounded makes one PKCS#11 call on instance in, in a goroutine of its own, and waits at most timeout:
// a call stuck in the module is left there (it leaves the instance when it returns, so the instance is
// never finalised under it) and reported as a device-down error wrapping errCallStuck.
func callBounded[T any](ctx context.Context, d *Device, in *Instance, op string, timeout time.Duration, f func(c *pkcs11.Ctx) (T, error)) (T, error) {
	var zero T
	if !in.enter() {
		return zero, errclass.DownErr(d.Name, "", op, "module instance is not usable")
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		func() {
			defer in.exit()
			r.v, r.err = f(in.ctx)
		}()
		// Out of the instance before the caller hears: a caller that releases the device next (Inspect,
		// InitKEK) must find it idle, or the module is never finalised and the next load in this process
		// finds it initialised already.
		done <- r
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return zero, errclass.P11Err(d.Name, "", op, r.err)
		}
		return r.v, nil
	case <-t.C:
		return zero, &errclass.DeviceError{Device: d.Name, Op: op, Class: errclass.ClassDeviceDown,
			Err: fmt.Errorf("%w within policy.health.timeout (%v); left running in the module", errCallStuck, timeout)}
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func setErr(msg, class *string, err error) {
	*msg, *class = err.Error(), errclass.ClassOf(err).String()
}

func tokenInfo(ti pkcs11.TokenInfo, own int) *inspection.TokenInfo {
	return &inspection.TokenInfo{
		Label: ti.Label, Serial: ti.SerialNumber, Manufacturer: ti.ManufacturerID, Model: ti.Model,
		Firmware: version(ti.FirmwareVersion), Hardware: version(ti.HardwareVersion),
		MaxSessions: sessionCount(ti.MaxSessionCount, true), Sessions: sessionCount(ti.SessionCount, false),
		OwnSessions: own,
	}
}

func version(v pkcs11.Version) string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

func sessionCount(v uint, isMax bool) inspection.SessionCount {
	switch {
	case v == pkcs11.CK_UNAVAILABLE_INFORMATION:
		return inspection.SessionCount{Kind: inspection.SessionsUnknown}
	case isMax && v == pkcs11.CK_EFFECTIVELY_INFINITE:
		return inspection.SessionCount{Kind: inspection.SessionsNoLimit}
	}
	return inspection.SessionCount{Kind: inspection.SessionsCount, Value: uint64(v)}
}

// Inspected is one device as inspectAll found it: its report and, per partition, the keys and the secret
// keys its token holds (nil where the partition did not open).
type Inspected struct {
	Report  inspection.DeviceReport
	Keys    []map[string]*KeyObject
	Secrets []map[string]*SecretObject
}

// InspectAll is the device side of the library's Inspect: it makes every device of s, loads their modules
// one at a time, opens and reads them concurrently, and releases them all before it returns. base[i] is
// device i's report as far as the configuration says (name, region, tier, module); callTimeout bounds
// each call after the open (policy.health.timeout). The error is a device's config error.
func InspectAll(ctx context.Context, s *Settings, o inspection.Options, callTimeout time.Duration, base []inspection.DeviceReport) ([]Inspected, error) {
	var devs []*Device
	defer func() { releaseAll(devs, s.Own.CloseTimeout) }()
	for i := range s.Devices {
		d, err := NewDevice(s, i, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}

	// Load the modules one device at a time, each with its own init_timeout: loads share a process-wide
	// lock, and a device queued behind another's hung C_Initialize would spend its own deadline waiting.
	// Healthy loads take a round trip or two; the rest of each open runs concurrently below.
	loads := make([]loadResult, len(devs))
	for i, d := range devs {
		loads[i] = loadBounded(ctx, d, s.Own.InitTimeout)
	}
	out := make([]Inspected, len(devs))
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Report, out[i].Keys = inspectDevice(ctx, s, d, o, loads[i], callTimeout, base[i])
		}()
	}
	wg.Wait() // bounded: inspectDevice waits on no call past its deadline
	for i, d := range devs {
		if out[i].Keys == nil {
			continue
		}
		out[i].Secrets = make([]map[string]*SecretObject, len(out[i].Keys))
		for pi, keys := range out[i].Keys {
			if keys != nil {
				out[i].Secrets[pi] = d.SecretKeys(pi)
			}
		}
	}
	return out, nil
}
