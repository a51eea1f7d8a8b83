package chaos

import (
	"context"
	"crypto"
	"crypto/rsa"
	"path/filepath"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

func TestExp(t *testing.T) {
	for _, rate := range []float64{0, 300, 600} {
		t0 := time.Now()
		topo := softhsmtest.StartT(t, softhsmtest.Options{})
		t1 := time.Now()
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := topo.WriteConfig(path, softhsmtest.ConfigOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg, err := pkcs11ha.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := pkcs11ha.Open(context.Background(), cfg, pkcs11ha.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))), pkcs11ha.WithRegisterer(nil))
		if err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		ctx := context.Background()
		ek, _ := cl.Key(ctx, "payments", "ec-key")
		rk, _ := cl.Key(ctx, "payments", "rsa-key")
		rpub := topo.Keys["rsa-key"].Public().(*rsa.PublicKey)
		l := &Load{Rate: rate, Tasks: []Task{
			SignTask("ec", 50, ek, topo.Keys["ec-key"].Public(), crypto.SHA256),
			SignTask("rsa", 15, rk, rpub, crypto.SHA256),
			SignTask("pss", 10, rk, rpub, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}),
			DecryptOAEPTask("oaep", 25, rk, rpub, crypto.SHA1),
		}}
		rec := NewRecorder("baseline", true)
		stop := l.Start(rec)
		time.Sleep(3 * time.Second)
		n := stop()
		ops := rec.Ops()
		s := Summarize(ops, rec.Phases(), func(d string) bool { return d[:4] == "west" })
		for _, st := range cl.Status() {
			t.Logf("%s %s br=%s ewma=%v inflight=%d ab=%d reinit=%d last=%q reason=%q", st.Name, st.State, st.Breaker, st.EWMA, st.InFlight, st.Abandoned, st.Reinits, st.LastError, st.Reason)
		}
		t3 := time.Now()
		cl.Close()
		t4 := time.Now()
		t.Logf("rate %v start %v open %v ops %d (%.0f/s) failed %d invalid %d p50 %v p99 %v p999 %v max %v dev %v close %v",
			rate, t1.Sub(t0), t2.Sub(t1), n, float64(n)/3, s.Failed, s.Invalid, s.P50, s.P99, s.P999, s.Max, s.ByDevice, t4.Sub(t3))
		for ti, task := range l.Tasks {
			var lat []time.Duration
			for _, o := range ops {
				if o.Task == ti {
					lat = append(lat, o.Latency)
				}
			}
			slices.Sort(lat)
			t.Logf("  %s n=%d p50=%v p99=%v max=%v", task.Name, len(lat), Percentile(lat, .5), Percentile(lat, .99), Percentile(lat, 1))
		}
		for _, o := range ops {
			if o.Err != nil {
				t.Log(o.Err)
				break
			}
		}
	}
}
