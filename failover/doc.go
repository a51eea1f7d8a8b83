// Package failover is the routing policy of the HSM load balancer: it decides which device (member)
// serves each operation and runs the attempt under a deadline and that member's circuit breaker.
//
// Members are grouped in tiers (0 = local region, 1 = DR, ...); a call uses the lowest tier that has an
// eligible member and, inside it, power-of-two-choices on peak-EWMA latency × (in-flight + 1). Health
// and breaker changes rebuild an immutable view that Pick reads without locks or allocation. Do adds
// deadlines that hold even when the device call cannot be cancelled (cgo), bounded accounting of such
// abandoned calls, retries on retryable error classes, spilling to the next tier, and optional hedging.
//
// The package knows nothing about PKCS#11: an error reaches it as a Class (see Classified) that says only
// what routing does with it (move on or not, count on the breaker or not), and a member is just an index
// that Do hands to the caller's function.
package failover
