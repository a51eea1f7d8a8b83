// Package handover is the channel of a hot upgrade between the old and the new hsm-ha-proxy process
// (docs/ARCHITECTURE.md, "Hot upgrade"): a SOCK_SEQPACKET socketpair over which the old process passes its
// live connections, each as a file descriptor (SCM_RIGHTS) with a JSON document of its state. It knows
// nothing of what the documents say: the doors (p11front, proxy) write and read them.
package handover
