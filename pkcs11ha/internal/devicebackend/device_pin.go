package devicebackend

import "crypto/sha256"

// PinHash identifies a PIN without keeping it.
func PinHash(pin string) [32]byte { return sha256.Sum256([]byte(pin)) }

// secret is the PIN to log in with: the one last reloaded, else the configuration's.
func (p *devPartition) secret() string {
	if s := p.owner().newPIN.Load(); s != nil {
		return *s
	}
	return p.pin
}

// rejectPIN remembers that the token refused pin.
func (p *devPartition) rejectPIN(pin string) {
	h := PinHash(pin)
	p.owner().rejected.Store(&h)
}

// UsePIN is the in-process backend's: see Backend.UsePIN.
func (d *Device) UsePIN(pi int, pin string) bool {
	p := d.Parts[pi]
	p.newPIN.Store(&pin)
	if p.credFatal.Load() == nil {
		return false
	}
	if r := p.rejected.Load(); r != nil && *r == PinHash(pin) {
		return false // never twice with the same PIN
	}
	p.credFatal.Store(nil) // the next probe reopens the partition and logs in, once
	return true
}
