// Package inspection holds the report of a one-shot inspection of every device of a configuration
// (pkcs11ha.Inspect, behind `hsm-ha-proxy check`): what each module and token says about itself, how fast
// it answers, and every key compared across devices. Types only: the inspection itself needs the device
// backend, in package pkcs11ha.
package inspection
