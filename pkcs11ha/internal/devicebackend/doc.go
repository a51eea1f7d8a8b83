// Package devicebackend is the device backend of package pkcs11ha: all the code that talks PKCS#11 to
// one configured device (docs/ARCHITECTURE.md, "Device backend").
//
// Backend is what the cluster sees of a device. *Device implements it in this process: the module
// registry, module instances and their re-initialisation and retirement, lanes, session pools, login,
// the key and secret-key listings, the operations and the admin path. The worker backend implements it
// with one worker process per device (policy.isolation "process"), which serves with a *Device of its
// own. Operations are plain data (Op, AdminOp), so the same request runs in this process or in a worker.
// The library binds the configuration and policy and hands the backend a Settings; Inspect's and
// InitKEK's device work runs here too (InspectAll, InitKEK).
//
// The errors are the library's own, from package errclass: the backend creates them and classifies every
// PKCS#11 return code with errclass's one table, so they reach the library's callers as they are.
//
// Besides miekg/pkcs11, only this package and internal/onecall call a PKCS#11 module.
package devicebackend
