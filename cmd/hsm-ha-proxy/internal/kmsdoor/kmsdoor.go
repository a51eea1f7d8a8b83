package kmsdoor

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
	"k8s.io/kms/pkg/service"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/unixsock"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// keyIDPrefix starts every key_id this door hands out: "pkcs11-ha:PARTITION/LABEL:KCV".
const keyIDPrefix = "pkcs11-ha:"

// apiVersion is what Status reports: the KMS v2 API.
const apiVersion = "v2"

// Cluster is what the door needs of a *pkcs11ha.Cluster.
type Cluster interface {
	SecretKey(ctx context.Context, partition, label string) (*pkcs11ha.SecretKey, error)
	Status() []pkcs11ha.DeviceStatus
}

// Service implements k8s.io/kms's service.Service with a cluster secret key.
type Service struct {
	cl        Cluster
	partition string
	label     string
	timeout   time.Duration
	log       *slog.Logger
}

var _ service.Service = (*Service)(nil)

// New returns the door's service for the AES key label of partition; each call runs under timeout
// (policy.request_timeout) as well as the API server's own deadline.
func New(cl Cluster, partition, label string, timeout time.Duration, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cl: cl, partition: partition, label: label, timeout: timeout, log: log}
}

// KeyID is the key_id of key k: its partition, label and check value, so that a rotation (a new label, or
// another key under the label) is a new key_id the API server sees.
func KeyID(k *pkcs11ha.SecretKey) string {
	return keyIDPrefix + k.Partition() + "/" + k.Label() + ":" + k.CheckValue()
}

// aad binds a ciphertext to its key_id: the API server stores both and hands both back to Decrypt.
func aad(keyID string) []byte { return []byte("pkcs11-ha kms v2\x00" + keyID) }

// current is the configured key.
func (s *Service) current(ctx context.Context) (*pkcs11ha.SecretKey, error) {
	k, err := s.cl.SecretKey(ctx, s.partition, s.label)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(k.Algorithm(), "AES") {
		return nil, fmt.Errorf("kms: key %q of partition %q is %s, not AES", s.label, s.partition, k.Algorithm())
	}
	return k, nil
}

// Encrypt seals data (the API server's DEK seed) with the configured key.
func (s *Service) Encrypt(ctx context.Context, uid string, data []byte) (*service.EncryptResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	k, err := s.current(ctx)
	if err != nil {
		return nil, err
	}
	id := KeyID(k)
	var out pkcs11ha.Outcome
	ct, err := k.Seal(pkcs11ha.WithOutcome(ctx, &out), data, aad(id))
	if err != nil {
		s.log.Warn("kms encrypt failed", "uid", uid, "key_id", id, "err", err)
		return nil, err
	}
	s.log.Debug("kms encrypt", "uid", uid, "key_id", id, "device", out.Device)
	return &service.EncryptResponse{Ciphertext: ct, KeyID: id}, nil
}

// Decrypt opens a ciphertext with the key its key_id names — the configured one, or an earlier one of the
// same partition still on the HSMs — after checking that key's check value is the key_id's.
func (s *Service) Decrypt(ctx context.Context, uid string, req *service.DecryptRequest) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	part, label, kcv, err := parseKeyID(req.KeyID)
	if err != nil {
		return nil, err
	}
	if part != s.partition {
		return nil, fmt.Errorf("kms: key_id %q names partition %q; this door serves %q", req.KeyID, part, s.partition)
	}
	k, err := s.cl.SecretKey(ctx, part, label)
	if err != nil {
		return nil, err
	}
	if k.CheckValue() != kcv {
		return nil, fmt.Errorf("kms: key %q now has check value %s, not the key_id's %s: the key under that label was replaced", label, k.CheckValue(), kcv)
	}
	var out pkcs11ha.Outcome
	pt, err := k.Open(pkcs11ha.WithOutcome(ctx, &out), req.Ciphertext, aad(req.KeyID))
	if err != nil {
		s.log.Warn("kms decrypt failed", "uid", uid, "key_id", req.KeyID, "device", out.Device, "err", err)
		return nil, err
	}
	return pt, nil
}

func parseKeyID(id string) (partition, label, kcv string, err error) {
	rest, ok := strings.CutPrefix(id, keyIDPrefix)
	i, j := strings.Index(rest, "/"), strings.LastIndex(rest, ":")
	if !ok || i <= 0 || j <= i+1 || j == len(rest)-1 {
		return "", "", "", fmt.Errorf("kms: key_id %q is not one of this door's (%sPARTITION/LABEL:KCV)", id, keyIDPrefix)
	}
	return rest[:i], rest[i+1 : j], rest[j+1:], nil
}

// Status is healthy ("ok") only when some device that holds the configured key can serve now: up or
// degraded, breaker not open. Its key_id is the configured key's.
func (s *Service) Status(ctx context.Context) (*service.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	k, err := s.current(ctx)
	if err != nil {
		return nil, err
	}
	res := &service.StatusResponse{Version: apiVersion, Healthz: "ok", KeyID: KeyID(k)}
	if why := s.unservable(k); why != "" {
		res.Healthz = why
	}
	return res, nil
}

// unservable says why no device can serve k, or "".
func (s *Service) unservable(k *pkcs11ha.SecretKey) string {
	holders := map[string]bool{}
	for _, d := range k.Info().Devices {
		holders[d] = true
	}
	if len(holders) == 0 {
		return "no device holds key " + k.Label()
	}
	for _, d := range s.cl.Status() {
		if holders[d.Name] && d.State != "down" && d.Breaker != "open" {
			return ""
		}
	}
	return "no device holding key " + k.Label() + " can serve"
}

// Door is the KMS v2 gRPC server on a unix socket (mode 0600: the API server on the same host).
type Door struct{ ln net.Listener }

// Listen listens on socket path (0600; a stale socket is replaced, a live one is an error). Serve starts
// serving: the socket exists before the cluster is opened, as the sidecar's other doors do.
func Listen(path string) (*Door, error) {
	ln, err := unixsock.Listen(path, unixsock.Options{Mode: 0o600, GID: unixsock.NoGroup})
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	return &Door{ln: ln}, nil
}

// Serve serves svc until ctx ends, then stops gracefully (pending calls finish, within grace) and
// removes the socket.
func (d *Door) Serve(ctx context.Context, svc *Service, grace time.Duration) error {
	gs := grpc.NewServer()
	// k8s.io/kms's own server (service.NewGRPCService) maps the API onto svc; it is registered on a
	// listener of ours so that the socket has our mode and stopping shares no state with it.
	kmsapi.RegisterKeyManagementServiceServer(gs, service.NewGRPCService(d.ln.Addr().String(), 10*time.Second, svc))
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(d.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("kms: serving: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(grace):
		gs.Stop()
		<-stopped
	}
	<-errc
	_ = d.ln.Close()
	return nil
}

// Serving makes a door of a listener the caller opened (a socket a hot upgrade passed on, say).
func Serving(ln net.Listener) *Door { return &Door{ln: ln} }

// KeepSocket makes Close leave the socket file: another process serves on it.
func (d *Door) KeepSocket() { unixsock.KeepSocket(d.ln) }

// Close releases the listener of a door that was never served.
func (d *Door) Close() { _ = d.ln.Close() }
