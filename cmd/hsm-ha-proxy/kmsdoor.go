package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/kmsdoor"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// kmsDoor is the Kubernetes KMS v2 door (server.kms), opened like the PKCS#11 door: its socket before
// the cluster, served once the cluster is open. A nil *kmsDoor is the door switched off.
type kmsDoor struct {
	cfg  *sidecarconfig.Config
	door *kmsdoor.Door
	done chan error
}

// openKMS listens on server.kms (or adopts the socket a hot upgrade's old process passed, so that the API
// server's gRPC client reconnects to the same path); nil when it is not set.
func openKMS(cfg *sidecarconfig.Config, up *upgrader) (*kmsDoor, error) {
	if cfg.Server.KMS == "" {
		return nil, nil
	}
	path := cfg.Server.KMSSocket()
	opts := unixsock.Options{Mode: 0o600, GID: unixsock.NoGroup}
	ln, err := up.listen("unix", path, func(inh net.Listener) (net.Listener, error) {
		if ul, ok := inh.(*net.UnixListener); ok {
			return unixsock.Inherit(path, ul, opts)
		}
		return unixsock.Listen(path, opts)
	})
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	return &kmsDoor{cfg: cfg, door: kmsdoor.Serving(ln), done: make(chan error, 1)}, nil
}

// start serves the door with cluster cl until ctx ends.
func (k *kmsDoor) start(ctx context.Context, cl *pkcs11ha.Cluster, logger *slog.Logger) {
	if k == nil {
		return
	}
	svc := kmsdoor.New(cl, k.cfg.KMS.Partition, k.cfg.KMS.Key, k.cfg.Policy.RequestDeadline(), logger)
	grace := k.cfg.Server.ShutdownGrace.D()
	if grace <= 0 {
		grace = proxy.DefaultShutdownGrace
	}
	go func() {
		err := k.door.Serve(ctx, svc, grace)
		if err != nil {
			logger.Error("the KMS door stopped serving", "kms", k.cfg.Server.KMS, "err", err)
		}
		k.done <- err
	}()
	logger.Info("KMS v2 door serving", "kms", k.cfg.Server.KMS, "partition", k.cfg.KMS.Partition, "key", k.cfg.KMS.Key)
}

// wait returns once the door has stopped (after ctx ended), with its Serve's error.
func (k *kmsDoor) wait() error {
	if k == nil {
		return nil
	}
	return <-k.done
}

// keepSocket leaves the socket file when the door stops: a new process serves on it.
func (k *kmsDoor) keepSocket() {
	if k != nil {
		k.door.KeepSocket()
	}
}

// close releases the socket of a door that was never started; keep leaves its socket file (the new process
// of a hot upgrade that gives up while the old one serves on it).
func (k *kmsDoor) close(keep bool) {
	if k == nil {
		return
	}
	if keep {
		k.door.KeepSocket()
	}
	k.door.Close()
}
