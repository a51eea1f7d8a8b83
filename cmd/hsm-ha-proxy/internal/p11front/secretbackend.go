package p11front

import (
	"context"
	"crypto"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/servedkey"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// SecretBackend is what the front end needs of a *pkcs11ha.Cluster's secret keys (AES and HMAC). SecretKeys
// answers from memory, as Keys does.
type SecretBackend interface {
	SecretKeys(partition string) ([]pkcs11ha.SecretKeyInfo, error)
	SecretKey(ctx context.Context, partition, label string) (SecretHandle, error)
}

// SecretHandle is what the front end needs of a *pkcs11ha.SecretKey (servedkey.Secret): its operations,
// each naming the device that served it ("" when none did).
type SecretHandle interface {
	MACDevice(ctx context.Context, h crypto.Hash, data []byte) ([]byte, string, error)
	VerifyMACDevice(ctx context.Context, h crypto.Hash, data, mac []byte) (string, error)
	EncryptGCMDevice(ctx context.Context, nonce, plaintext, aad []byte, tagBits int) ([]byte, string, error)
	DecryptGCMDevice(ctx context.Context, nonce, ciphertext, aad []byte, tagBits int) ([]byte, string, error)
	EncryptCBCPadDevice(ctx context.Context, iv, plaintext []byte) ([]byte, string, error)
	DecryptCBCPadDevice(ctx context.Context, iv, ciphertext []byte) ([]byte, string, error)
}

func (b clusterBackend) SecretKeys(partition string) ([]pkcs11ha.SecretKeyInfo, error) {
	return b.cl.SecretKeys(partition)
}

func (b clusterBackend) SecretKey(ctx context.Context, partition, label string) (SecretHandle, error) {
	k, err := b.cl.SecretKey(ctx, partition, label)
	if err != nil {
		return nil, err
	}
	return servedkey.Secret{SecretKey: k}, nil
}
