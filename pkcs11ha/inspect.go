package pkcs11ha

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// defaultOpenBudget is how long Inspect lets a device take, once its module is loaded, to find its
// tokens, log in and list its keys before abandoning it: tens of round trips, which over a long DR link
// add up to seconds.
const defaultOpenBudget = 30 * time.Second

// defaultLatencySamples is how many C_GetTokenInfo calls time each device.
const defaultLatencySamples = 5

// Inspect connects to every device of cfg as Open does — the same module registry and environment lock,
// policy.init_timeout, token resolution by label or serial, and login (one C_Login per device and
// partition; a rejected PIN is never tried again) — reads what each module and token says about itself,
// times a few C_GetTokenInfo calls per device, compares every key across devices with Open's majority
// vote, releases everything and returns the report. It starts no probes and routes nothing.
//
// A device that does not answer is reported, never waited on: its module load is bounded by
// policy.init_timeout (modules are loaded one device at a time, so that a hung C_Initialize does not eat
// the next device's deadline), the rest of its open by Options.OpenTimeout, and every later call by
// policy.health.timeout; a call stuck in a module is left running there (its module instance is never
// finalised under it). The error is non-nil only for an invalid config
// (*ConfigError) or when ctx ends first.
func Inspect(ctx context.Context, cfg *Config, o inspection.Options) (*inspection.Report, error) {
	if cfg == nil {
		return nil, errors.New("pkcs11ha: nil config")
	}
	s, err := compile(cfg)
	if err != nil {
		return nil, err
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = defaultOpenBudget
	}
	if o.LatencySamples <= 0 {
		o.LatencySamples = defaultLatencySamples
	}
	// What the configuration says of each device; the backend adds what the device says.
	base := make([]inspection.DeviceReport, len(s.cfg.Devices))
	for i, dc := range s.cfg.Devices {
		base[i] = inspection.DeviceReport{Name: dc.Name, Region: dc.Region, Local: dc.Region == s.cfg.LocalRegion,
			Tier: s.cfg.tierOf(i), TierOverride: dc.Tier != nil, Module: dc.Module}
	}
	found, err := devicebackend.InspectAll(ctx, s.backend(), o, s.monitor.Timeout, base)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pkcs11ha: inspect: %w", err)
	}
	rep := &inspection.Report{LocalRegion: s.cfg.LocalRegion, SessionPoolSize: s.own.SessionPoolSize, Devices: make([]inspection.DeviceReport, len(found))}
	held := make([][]map[string]*devicebackend.KeyObject, len(found)) // [device][partition] -> label -> key; nil: not open
	secrets := make([][]map[string]*devicebackend.SecretObject, len(found))
	for i, f := range found {
		rep.Devices[i], held[i], secrets[i] = f.Report, f.Keys, f.Secrets
	}
	rep.Partitions = compareKeys(&s.cfg, rep.Devices, held)
	compareSecrets(rep, secrets)
	return rep, nil
}
