package p11front

import (
	"context"
	"crypto"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/servedkey"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// Backend is what the front end needs of a *pkcs11ha.Cluster (an interface so that the protocol layer can
// be tested without HSMs). Keys and Key answer from memory (the cluster's key table): the front end calls
// them on a connection's reader goroutine (see inline), with no deadline of their own.
type Backend interface {
	Keys(partition string) ([]pkcs11ha.KeyInfo, error)
	Key(ctx context.Context, partition, label string) (KeyHandle, error)
	SecretBackend // secretbackend.go
}

// KeyHandle is what the front end needs of a *pkcs11ha.Key: its operations, each naming the device that
// served it ("" when none did).
type KeyHandle interface {
	Public() crypto.PublicKey
	SignDevice(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, string, error)
	DecryptDevice(ctx context.Context, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, string, error)
}

// Authorizer says who a unix peer is and which partitions it may use; the HTTP API's client table
// (proxy.Server.UnixClient) is one, so that one clients: section and its SIGHUP reload govern both doors.
// partitions must not be modified.
type Authorizer interface {
	UnixClient(uid, gid int) (name string, partitions map[string]bool, ok bool)
}

// ClusterBackend adapts a *pkcs11ha.Cluster to Backend.
func ClusterBackend(cl *pkcs11ha.Cluster) Backend { return clusterBackend{cl} }

type clusterBackend struct{ cl *pkcs11ha.Cluster }

func (b clusterBackend) Keys(partition string) ([]pkcs11ha.KeyInfo, error) {
	return b.cl.Keys(partition)
}

func (b clusterBackend) Key(ctx context.Context, partition, label string) (KeyHandle, error) {
	k, err := b.cl.Key(ctx, partition, label)
	if err != nil {
		return nil, err
	}
	return servedkey.Key{Key: k}, nil
}
