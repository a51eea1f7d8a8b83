package p11front

import (
	"crypto/sha256"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// BenchmarkSignECDSA compares ECDSA P-256 signatures by a Go client through the stock p11-kit-client.so
// against (a) the front end, with the cluster over the local pair of p11-kit devices, and (b) a stock
// `p11-kit server` in front of one device. Each goroutine has its own session and signs with
// C_SignInit + C_Sign (miekg's Sign: a length query, then the signature). Reports p50/p99 per signature.
// Not part of make test: go test -run '^$' -bench SignECDSA ./cmd/hsm-ha-proxy/internal/p11front/
// A quick look only: the cluster reaches its devices through the harness's relays while (b) does not, and
// the client runs in this process. The fair comparison is `make bench`'s front-end section
// (hsm-bench -sections frontend: the real binary, relay-free, the clients in child processes, in turns).
func BenchmarkSignECDSA(b *testing.B) {
	d := startDevices(b)
	f := startFront(b, ClusterBackend(d.cl), fakeAuth{os.Getuid(): {"payments"}}, d.cl.Config().PartitionNames())
	for _, target := range []struct{ name, socket string }{{"front-end", f.socket}, {"p11-kit-server", d.directSocket()}} {
		p := openClient(b, target.socket)
		for _, g := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", target.name, g), func(b *testing.B) { benchSign(b, p, g, d.pin("payments")) })
		}
	}
}

func benchSign(b *testing.B, p *pkcs11.Ctx, goroutines int, pin string) {
	slots, err := p.GetSlotList(true)
	require.NoError(b, err)
	var slot uint
	for _, sl := range slots {
		if ti, err := p.GetTokenInfo(sl); err == nil && ti.Label == "payments" {
			slot = sl
		}
	}
	sessions := make([]pkcs11.SessionHandle, goroutines)
	var key pkcs11.ObjectHandle
	for i := range sessions {
		sessions[i], err = p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		require.NoError(b, err)
		defer p.CloseSession(sessions[i])
	}
	// The device's own token wants its PIN; the front end takes any.
	if err := p.Login(sessions[0], pkcs11.CKU_USER, pin); err != nil && err != pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		require.NoError(b, err)
	}
	key = findKey(b, p, sessions[0], pkcs11.CKO_PRIVATE_KEY, "ec-key")
	digest := sha256.Sum256([]byte("bench"))
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	lat := make([][]time.Duration, goroutines)
	var wg sync.WaitGroup
	per := b.N/goroutines + 1
	b.ResetTimer()
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				start := time.Now()
				if err := p.SignInit(sessions[g], mech, key); err != nil {
					b.Error(err)
					return
				}
				if _, err := p.Sign(sessions[g], digest[:]); err != nil {
					b.Error(err)
					return
				}
				lat[g] = append(lat[g], time.Since(start))
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	}
	b.ReportMetric(float64(len(all))/b.Elapsed().Seconds(), "signs/s")
}
