// Package errclass holds pkcs11ha's error types and its one error table (docs/ARCHITECTURE.md, "Error
// classes"): the class of a PKCS#11 failure as a function of the function and its return code
// (classify), the errors that carry a class (DeviceError, InputError, MechanismError, AuthError,
// SignatureError, ObjectCountError) with ConfigError and the sentinels, and what each class means to the
// router (Route).
//
// It is a package of its own because the device backend (internal/devicebackend), which creates most of
// these errors, and the library, which returns them, both need it. Package pkcs11ha re-exports every
// public name with a type alias, constant or variable of the same value, so errors.As and errors.Is on
// pkcs11ha's names match errors made here, on whichever side of the backend interface
// (docs/ARCHITECTURE.md, "Device backend"). It makes no PKCS#11 call: it reads miekg/pkcs11's return
// codes only.
package errclass
