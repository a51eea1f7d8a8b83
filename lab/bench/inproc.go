package bench

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

var (
	benchPartition = softhsmtest.PartitionSpec{Name: "payments", TokenLabel: "payments", PIN: "1234", SOPIN: "5678"}
	ecKey          = softhsmtest.KeySpec{Label: "ec-key", ID: []byte{0x02}, Kind: softhsmtest.KindECP256}
	rsaKey         = softhsmtest.KeySpec{Label: "rsa-key", ID: []byte{0x01}, Kind: softhsmtest.KindRSA2048}
)

// Contender labels of the in-process table, in table order.
const (
	labDirect = "direct miekg/pkcs11"
	labC11    = "crypto11 v1.6.2"
	labHA1    = "pkcs11ha, 1 device"
	labHA2    = "pkcs11ha, 2 devices"
	// What verify-after-sign costs: pkcs11ha with one device and the other setting of
	// policy.verify_signatures for the algorithm (the default "rsa" verifies RSA, not ECDSA).
	labHA1Off = "pkcs11ha, 1 device, verify off"
	labHA1All = "pkcs11ha, 1 device, verify all"
	// What a device worker costs (policy.isolation process, the sidecar's default): one hop over a unix
	// socket per call.
	labHA1Proc = "pkcs11ha, 1 device, worker"
	// A device declared non_blocking (an in-process software token): attempts run on the caller's
	// goroutine, without the hand-off to an attempt worker.
	labHA1Inline = "pkcs11ha, 1 device, non_blocking"
)

var contenderOrder = []string{labDirect, labC11, labHA1, labHA2, labHA1Off, labHA1All, labHA1Proc, labHA1Inline}

// defaultContenders are the contenders of a cell when none are named: the four, and the verification
// counterpart of the default pkcs11ha row (RSA: verify off; ECDSA: verify all).
func defaultContenders(alg string) []string {
	if isSecretAlg(alg) {
		return []string{labDirect, labHA1} // crypto11 v1.6.2 has no HMAC; the verify rows do not apply
	}
	if alg == RSA2048 {
		return []string{labDirect, labC11, labHA1, labHA2, labHA1Off, labHA1Proc, labHA1Inline}
	}
	return []string{labDirect, labC11, labHA1, labHA2, labHA1All, labHA1Proc, labHA1Inline}
}

type childRunner func(Spec, time.Duration) (Result, error)

// InprocCell is one (algorithm, goroutines) cell: every contender's Result (its slices in turn order).
type InprocCell struct {
	Alg        string
	Goroutines int
	Results    map[string]Result // contender label -> Result
	Load       loadRange
}

func pubDER(k crypto.Signer) ([]byte, error) { return x509.MarshalPKIXPublicKey(k.Public()) }

// inproc measures the four contenders on in-process SoftHSM devices (private copies of libsofthsm2.so).
// Every contender runs in a child process of its own on the same token: device local-1's copy of the
// library, its SOFTHSM2_CONF and its token directory. pkcs11ha with two devices adds local-2, a second copy.
// For each cell the four children are started (and warmed up) one after the other, then take turns: each
// measures a slice of Cell/Rounds while the others wait idle, Rounds times, the order rotating every
// round, so that a change in the machine's load hits all of them alike.
func inproc(ctx context.Context, o Options, dir, self string, progress func(string, ...any)) ([]*InprocCell, error) {
	topo, err := softhsmtest.Start(ctx, softhsmtest.Options{
		Dir: dir,
		Devices: []softhsmtest.DeviceSpec{
			{Name: "local-1", Region: "eastus", InProcess: true},
			{Name: "local-2", Region: "eastus", InProcess: true},
		},
		Partitions: []softhsmtest.PartitionSpec{benchPartition},
		Keys:       []softhsmtest.KeySpec{rsaKey, ecKey},
		SecretKeys: []softhsmtest.SecretKeySpec{benchAESKey, benchHMACKey},
	})
	if err != nil {
		return nil, err
	}
	defer topo.Close()
	d1 := topo.Device("local-1")
	ha1 := filepath.Join(dir, "hsm-ha-1.yaml")
	ha2 := filepath.Join(dir, "hsm-ha-2.yaml")
	ha1Off := filepath.Join(dir, "hsm-ha-1-verify-off.yaml")
	ha1All := filepath.Join(dir, "hsm-ha-1-verify-all.yaml")
	ha1Proc := filepath.Join(dir, "hsm-ha-1-worker.yaml")
	ha1Inline := filepath.Join(dir, "hsm-ha-1-non-blocking.yaml")
	for _, c := range []struct {
		path, policy string
		devs         []*softhsmtest.Device
	}{{ha1, "", topo.Devices[:1]}, {ha2, "", topo.Devices}, {ha1Off, "verify_signatures: off", topo.Devices[:1]},
		{ha1All, "verify_signatures: all", topo.Devices[:1]}, {ha1Proc, "isolation: process", topo.Devices[:1]},
		{ha1Inline, nonBlocking, topo.Devices[:1]}} {
		if err := writeHAConfig(c.path, c.devs, c.policy); err != nil {
			return nil, err
		}
	}

	specs := map[string]Spec{
		labDirect:    {Contender: Direct, Module: d1.ModulePath, ModuleEnv: d1.ModuleEnv, TokenLabel: benchPartition.TokenLabel, PIN: benchPartition.PIN},
		labC11:       {Contender: Crypto11, Module: d1.ModulePath, ModuleEnv: d1.ModuleEnv, TokenLabel: benchPartition.TokenLabel, PIN: benchPartition.PIN},
		labHA1:       {Contender: HA, ConfigPath: ha1, Partition: benchPartition.Name},
		labHA2:       {Contender: HA, ConfigPath: ha2, Partition: benchPartition.Name},
		labHA1Off:    {Contender: HA, ConfigPath: ha1Off, Partition: benchPartition.Name},
		labHA1All:    {Contender: HA, ConfigPath: ha1All, Partition: benchPartition.Name},
		labHA1Proc:   {Contender: HA, ConfigPath: ha1Proc, Partition: benchPartition.Name},
		labHA1Inline: {Contender: HA, ConfigPath: ha1Inline, Partition: benchPartition.Name},
	}
	run := inprocRun{o: o, self: self, specs: specs, progress: progress, secrets: topo.SecretKeys}
	var cells []*InprocCell
	for _, alg := range o.Algs {
		run.contenders = o.Contenders
		if len(run.contenders) == 0 {
			run.contenders = defaultContenders(alg)
		}
		for _, g := range o.Goroutines {
			c := &InprocCell{Alg: alg, Goroutines: g, Results: map[string]Result{}}
			cells = append(cells, c)
			key := ecKey
			if alg == RSA2048 {
				key = rsaKey
			}
			var pub []byte
			if sk := secretKeyOf(alg); isSecretAlg(alg) {
				key = softhsmtest.KeySpec{Label: sk.Label, ID: sk.ID}
			} else if pub, err = pubDER(topo.Keys[key.Label]); err != nil {
				return nil, err
			}
			if err := run.cell(ctx, c, key, pub); err != nil {
				return nil, err
			}
		}
	}
	return cells, nil
}

// inprocRun is what every cell of the in-process section shares.
type inprocRun struct {
	o          Options
	self       string          // this program, started as each contender's child
	specs      map[string]Spec // contender label -> child spec, without the cell's algorithm and key
	contenders []string
	progress   func(string, ...any)
	secrets    map[string][]byte // secret key values by label (test keys), for the first output's check
	// turn, when set, is called before each measured slice with the contender's label and the cell; the
	// function it returns is called after the slice (the front-end section reads the sidecar's CPU time).
	turn func(lab string, c *InprocCell) func()
}

// cell measures one cell: a child per contender, started and warmed up one after the other, then
// Rounds turns of one slice each, the order rotating every round.
func (run inprocRun) cell(ctx context.Context, c *InprocCell, key softhsmtest.KeySpec, pub []byte) error {
	o, alg, g := run.o, c.Alg, c.Goroutines
	procs := map[string]*childProc{}
	killAll := func() {
		for _, p := range procs {
			p.kill()
		}
	}
	for _, lab := range run.contenders {
		s := run.specs[lab]
		s.Alg, s.Goroutines, s.Warmup = alg, g, o.Warmup
		s.KeyLabel, s.KeyID, s.PubDER, s.Secret = key.Label, key.ID, pub, run.secrets[key.Label]
		if o.ProfileDir != "" {
			s.CPUProfile = filepath.Join(o.ProfileDir, fmt.Sprintf("%s-%s-g%d.pprof", slug(lab), slug(alg), g))
		}
		p, err := startChild(ctx, run.self, s)
		if err != nil {
			killAll()
			return fmt.Errorf("%s, %s, %d goroutines: %w", lab, alg, g, err)
		}
		procs[lab] = p
	}
	c.Load.add(loadAvg())
	slice := o.Cell / time.Duration(o.Rounds)
	for r := range o.Rounds {
		for i := range run.contenders {
			lab := run.contenders[(i+r)%len(run.contenders)]
			after := func() {}
			if run.turn != nil {
				after = run.turn(lab, c)
			}
			_, err := procs[lab].slice(slice)
			after()
			if err != nil {
				killAll()
				return fmt.Errorf("%s, %s, %d goroutines, slice %d: %w", lab, alg, g, r+1, err)
			}
		}
	}
	for _, lab := range run.contenders {
		res, err := procs[lab].done()
		delete(procs, lab)
		if err != nil {
			killAll()
			return fmt.Errorf("%s, %s, %d goroutines: %w", lab, alg, g, err)
		}
		c.Results[lab] = res
		c.Load.add(res.LoadEnd)
		run.report(c, lab, res)
	}
	return nil
}

// report prints one contender's result of a cell as progress.
func (run inprocRun) report(c *InprocCell, lab string, res Result) {
	run.progress("  %-12s %d gor  %-20s %8s ops/s  p50 %-7s p99 %-7s cpu/op %s usr + %s sys + %s workers  errors %d  load %.2f",
		c.Alg, c.Goroutines, lab, fmtRate(res.OpsPerSec()), fmtDur(res.P50), fmtDur(res.P99),
		fmtDur(res.UserPerOp), fmtDur(res.SysPerOp), fmtDur(res.WorkersPerOp), res.Errors, res.LoadEnd)
	if res.Errors > 0 {
		run.progress("    first error: %s", res.FirstErr)
	}
	if run.o.Verbose {
		var b strings.Builder
		for _, sl := range res.Slices {
			fmt.Fprintf(&b, " %s", fmtRate(sl.OpsPerSec()))
		}
		run.progress("    slices (ops/s):%s", b.String())
	}
}

func slug(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, s)
}

// writeHAConfig writes a pkcs11ha configuration with the given in-process devices, all local, the
// benchmark partition and the default policy, with the one policy line given unless it is empty (or, for
// nonBlocking, every device declared non_blocking).
// nonBlocking, as writeHAConfig's policy, declares the devices non_blocking instead.
const nonBlocking = "non_blocking"

func writeHAConfig(path string, devs []*softhsmtest.Device, policy string) error {
	var b strings.Builder
	b.WriteString("local_region: eastus\ndevices:\n")
	for _, d := range devs {
		fmt.Fprintf(&b, "  - name: %s\n    region: %s\n    module: %s\n", strconv.Quote(d.Name), strconv.Quote(d.Region), strconv.Quote(d.ModulePath))
		if policy == nonBlocking {
			b.WriteString("    non_blocking: true\n")
		}
		b.WriteString("    module_env:\n")
		for k, v := range d.ModuleEnv {
			fmt.Fprintf(&b, "      %s: %s\n", strconv.Quote(k), strconv.Quote(v))
		}
	}
	fmt.Fprintf(&b, "partitions:\n  - name: %s\n    token_label: %s\n    pin: %s\n",
		strconv.Quote(benchPartition.Name), strconv.Quote(benchPartition.TokenLabel), strconv.Quote(benchPartition.PIN))
	if policy != "" && policy != nonBlocking {
		fmt.Fprintf(&b, "policy:\n  %s\n", policy)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// ratio returns the median over rounds of a's ops/s over b's in the same round (adjacent slices).
func (c *InprocCell) ratio(a, b string) float64 {
	ra, rb := c.Results[a].Slices, c.Results[b].Slices
	var xs []float64
	for i := range min(len(ra), len(rb)) {
		xs = append(xs, ra[i].OpsPerSec()/rb[i].OpsPerSec())
	}
	return median(xs)
}
