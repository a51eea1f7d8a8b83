package pkcs11ha

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// A wrong PIN fixed by the operator. A rejected PIN is never tried again (lockout), so a partition whose
// login failed stays closed on that device until its PIN changes: then, and only then, it is tried once
// with the new PIN. The PIN changes when a pin_file's content changes (noticed by the probes, which read
// the file of every partition that has one), or when Cluster.ReloadPINs re-reads the sources (pin_env,
// pin_file, and with a new config an inline pin: the sidecar does that on SIGHUP). Each (device,
// partition) remembers a hash of the PIN its token rejected and is never tried with it again; a new PIN
// that is rejected in turn is remembered the same way, so there is never a loop.

// pinState is the cluster's view of the PINs it reloaded.
type pinState struct {
	mu sync.Mutex // serialises reloads (probes of several devices may notice a pin_file change at once)
}

// usePIN makes pin the partition's PIN on every device, and lets each (device, partition) whose login was
// refused try it once, unless its token refused this very PIN. It returns the devices given a new try.
func (cl *Cluster) usePIN(pi int, pin string) []string {
	var retried []string
	for _, d := range cl.devices {
		if d.be.UsePIN(pi, pin) {
			retried = append(retried, d.name)
		}
	}
	return retried
}

// ReloadPINs reads every partition's PIN again from its source: the environment variable (pin_env), the
// file (pin_file) or, when cfg is not nil, the partition of the same name in cfg (which may also change
// the source; the sidecar passes the config it re-read on SIGHUP). A partition whose login failed on a
// device is tried there once with a PIN that differs from the one its token refused, at the device's next
// probe (started now). It returns how many (device, partition) pairs get that try; the PINs themselves
// are never logged or returned. Errors name the partition and field, as config errors do.
func (cl *Cluster) ReloadPINs(cfg *Config) (int, error) {
	cl.pins.mu.Lock()
	defer cl.pins.mu.Unlock()
	var errs []error
	n := 0
	for pi := range cl.s.cfg.Partitions {
		src := cl.s.cfg.Partitions[pi] // a copy: the cluster's settings never change
		if cfg != nil {
			for _, np := range cfg.Partitions {
				if np.Name == src.Name {
					src.PIN, src.PINEnv, src.PINFile = np.PIN, np.PINEnv, np.PINFile
				}
			}
		}
		pin, err := src.pin(fmt.Sprintf("partitions[%s]", src.Name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n += cl.retryWith(pi, pin, "reload")
	}
	return n, errors.Join(errs...)
}

// watchPINFiles reads the pin_file of every partition that has one and, when its content changed, makes
// it the partition's PIN (see usePIN). Probes call it: cheap, and only files are read.
func (cl *Cluster) watchPINFiles() {
	cl.pins.mu.Lock()
	defer cl.pins.mu.Unlock()
	for pi := range cl.s.cfg.Partitions {
		pc := &cl.s.cfg.Partitions[pi]
		if pc.PINFile == "" || len(cl.devices) == 0 {
			continue
		}
		b, err := os.ReadFile(pc.PINFile)
		if err != nil {
			continue // a file being replaced; the next probe reads it again
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" || devicebackend.PinHash(pin) == cl.devices[0].be.Partition(pi).PINHash {
			continue
		}
		cl.retryWith(pi, pin, "pin_file changed")
	}
}

// retryWith makes pin partition pi's PIN, logs which devices get a new try, and has them probed now.
func (cl *Cluster) retryWith(pi int, pin, why string) int {
	devs := cl.usePIN(pi, pin)
	if len(devs) == 0 {
		return 0
	}
	cl.log.Info("PIN changed: partition will log in again, once, on the devices that refused the old one",
		"partition", cl.s.cfg.Partitions[pi].Name, "devices", devs, "source", why)
	for _, d := range cl.devices {
		for _, name := range devs {
			if d.name == name && d.idx < len(cl.monitors) {
				cl.monitors[d.idx].ProbeNow()
			}
		}
	}
	return len(devs)
}
