package main

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11front"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/proxy"
	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// pkcs11Door is the PKCS#11 front end (server.pkcs11): its listener, opened before the cluster so that a
// second sidecar on the same socket fails before touching the HSMs, its server and the result of its
// Serve. A nil *pkcs11Door is the door switched off (server.pkcs11 empty); every method accepts it.
type pkcs11Door struct {
	ln      net.Listener
	once    sync.Once
	fe      *p11front.Server
	started chan struct{} // closed once fe is set and serving
	done    chan error
}

// openPKCS11 listens on server.pkcs11 (0600, or 0660 for server.pkcs11_group), or takes the socket the
// previous process of a hot upgrade served on; nil when it is not set.
func openPKCS11(sc sidecarconfig.ServerConfig, up *upgrader) (*pkcs11Door, error) {
	if sc.PKCS11 == "" {
		return nil, nil
	}
	path := strings.TrimPrefix(sc.PKCS11, "unix://")
	ln, err := up.listen("unix", path, func(inh net.Listener) (net.Listener, error) {
		return p11front.ListenInherited(sc.PKCS11, sc.PKCS11Group, inh)
	})
	if err != nil {
		return nil, err
	}
	return &pkcs11Door{ln: ln, started: make(chan struct{}), done: make(chan error, 1)}, nil
}

// start serves the door until ctx ends; only its first call does anything. Who sees which partition is
// the HTTP API's client table (srv.UnixClient), so a SIGHUP reload of clients: applies to both doors.
// objects, when not nil, are the object handles a hot upgrade's old process handed over.
func (d *pkcs11Door) start(ctx context.Context, cfg *sidecarconfig.Config, cl *pkcs11ha.Cluster, srv *proxy.Server,
	logger *slog.Logger, reg prometheus.Registerer, objects []byte) {
	if d == nil {
		return
	}
	d.once.Do(func() {
		d.fe = p11front.New(p11front.ClusterBackend(cl), srv, p11front.Options{
			Partitions:     cfg.PartitionNames(),
			RequestTimeout: cfg.Policy.RequestDeadline(),
			ShutdownGrace:  cfg.Server.ShutdownGrace.D(),
			Logger:         logger,
			Registerer:     reg,
		})
		if objects != nil {
			if err := d.fe.ImportObjects(objects); err != nil {
				logger.Error("upgrade: the old process's PKCS#11 object handles were not taken; handles given to applications may name other keys", "err", err)
			}
		}
		go func() {
			err := d.fe.Serve(ctx, d.ln)
			if err != nil {
				logger.Error("the PKCS#11 front end stopped serving", "pkcs11", cfg.Server.PKCS11, "err", err)
			}
			d.done <- err
		}()
		close(d.started)
	})
}

// server is the door's front end once started (nil before, or for a door switched off).
func (d *pkcs11Door) server() *p11front.Server {
	if d == nil {
		return nil
	}
	select {
	case <-d.started:
		return d.fe
	default:
		return nil
	}
}

// wait returns once the door has stopped (after ctx ended), with its Serve's error. A door never started
// never will be: its listener is closed.
func (d *pkcs11Door) wait() error {
	if d == nil {
		return nil
	}
	d.once.Do(func() {
		d.ln.Close()
		d.done <- nil
	})
	return <-d.done
}

// close releases the listener of a door that was never started; keep leaves its socket file (the new
// process of a hot upgrade that gives up while the old one serves on it).
func (d *pkcs11Door) close(keep bool) {
	if d == nil {
		return
	}
	if keep {
		unixsock.KeepSocket(d.ln)
	}
	d.ln.Close()
}
