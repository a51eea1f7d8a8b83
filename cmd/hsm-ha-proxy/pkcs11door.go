package main

import (
	"context"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11front"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// pkcs11Door is the PKCS#11 front end (server.pkcs11): its listener, opened before the cluster so that a
// second sidecar on the same socket fails before touching the HSMs, and the result of its Serve. A nil
// *pkcs11Door is the door switched off (server.pkcs11 empty); every method accepts it.
type pkcs11Door struct {
	ln   net.Listener
	done chan error
}

// openPKCS11 listens on server.pkcs11 (0600, or 0660 for server.pkcs11_group); nil when it is not set.
func openPKCS11(sc sidecarconfig.ServerConfig) (*pkcs11Door, error) {
	if sc.PKCS11 == "" {
		return nil, nil
	}
	ln, err := p11front.Listen(sc.PKCS11, sc.PKCS11Group)
	if err != nil {
		return nil, err
	}
	return &pkcs11Door{ln: ln, done: make(chan error, 1)}, nil
}

// start serves the door until ctx ends. Who sees which partition is the HTTP API's client table
// (srv.UnixClient), so a SIGHUP reload of clients: applies to both doors.
func (d *pkcs11Door) start(ctx context.Context, cfg *sidecarconfig.Config, cl *pkcs11ha.Cluster, srv *proxy.Server,
	logger *slog.Logger, reg prometheus.Registerer) {
	if d == nil {
		return
	}
	fe := p11front.New(p11front.ClusterBackend(cl), srv, p11front.Options{
		Partitions:     cfg.PartitionNames(),
		RequestTimeout: cfg.Policy.RequestDeadline(),
		ShutdownGrace:  cfg.Server.ShutdownGrace.D(),
		Logger:         logger,
		Registerer:     reg,
	})
	go func() {
		err := fe.Serve(ctx, d.ln)
		if err != nil {
			logger.Error("the PKCS#11 front end stopped serving", "pkcs11", cfg.Server.PKCS11, "err", err)
		}
		d.done <- err
	}()
}

// wait returns once the door has stopped (after ctx ended), with its Serve's error.
func (d *pkcs11Door) wait() error {
	if d == nil {
		return nil
	}
	return <-d.done
}

// close releases the listener of a door that was never started.
func (d *pkcs11Door) close() {
	if d != nil {
		d.ln.Close()
	}
}
