// Package kmsdoor is hsm-ha-proxy's Kubernetes KMS v2 door (server.kms): the KMS v2 plugin gRPC API
// (k8s.io/kms's service package) for the API server on the same host, backed by the AES key of the kms:
// section and served through the cluster's HA — a data-encryption-key seed sealed with AES-GCM on
// whichever device can serve, opened on any other. The design is in docs/ARCHITECTURE.md, "Secret keys";
// deployment in docs/encryption.md.
package kmsdoor
