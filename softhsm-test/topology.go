package softhsmtest

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PartitionSpec is one partition (application): a SoftHSM token with this label on every device.
type PartitionSpec struct {
	Name       string // partition name in the pkcs11ha config
	TokenLabel string // token label on every device; default Name
	PIN        string // user PIN
	SOPIN      string // security officer PIN
}

// DefaultPartitions are payments (PIN 1234, SO PIN 5678) and ledger (PIN 2345, SO PIN 6789), each the
// label of its token.
func DefaultPartitions() []PartitionSpec {
	return []PartitionSpec{
		{Name: "payments", TokenLabel: "payments", PIN: "1234", SOPIN: "5678"},
		{Name: "ledger", TokenLabel: "ledger", PIN: "2345", SOPIN: "6789"},
	}
}

// Options configure Start. Every field is optional.
type Options struct {
	// Dir is the root directory of the topology; tests pass t.TempDir(). Empty: a new temporary directory,
	// removed by Close.
	Dir         string
	Devices     []DeviceSpec    // default DefaultTopology(10 * time.Millisecond)
	Partitions  []PartitionSpec // default DefaultPartitions()
	Keys        []KeySpec       // default DefaultKeys()
	LocalRegion string          // default "eastus"
	Logf        func(format string, args ...any)

	// SecretKeys are created in every token besides Keys (none by default: DefaultSecretKeys is opt-in).
	// Devices' MissingKeys and DifferentKeys may name them too.
	SecretKeys []SecretKeySpec

	// Certificates puts a self-signed certificate (CN = label) for every imported key beside it in every
	// token, with the key's CKA_LABEL and CKA_ID (certs.go); it needs pkcs11-tool (Debian package opensc).
	Certificates bool
}

// Topology is a running set of devices. Close it (harnesstest.Start does, with t.Cleanup).
type Topology struct {
	Dir         string
	Devices     []*Device
	Partitions  []PartitionSpec
	KeySpecs    []KeySpec
	LocalRegion string
	// Keys are the keys imported into every token (label -> key), so tests can compare public keys.
	// Devices with MissingKeys or DifferentKeys hold Device.Keys instead.
	Keys map[string]crypto.Signer
	// Certificates are the DER certificates imported beside Keys with Options.Certificates (label ->
	// certificate), else empty. Devices with MissingKeys or DifferentKeys hold Device.Certificates instead.
	Certificates map[string][]byte
	// SecretKeySpecs and SecretKeys: Options.SecretKeys and their values (label -> value). Devices with
	// MissingKeys or DifferentKeys hold Device.SecretKeys instead.
	SecretKeySpecs []SecretKeySpec
	SecretKeys     map[string][]byte

	logf      func(format string, args ...any)
	ownDir    bool
	sockDir   string // short directory for sockets, created (and removed) by the topology, or ""
	closeOnce sync.Once
	closeErr  error
}

const defaultDRDelay = 10 * time.Millisecond

func (o Options) withDefaults() Options {
	if o.Devices == nil {
		o.Devices = DefaultTopology(defaultDRDelay)
	}
	if o.Partitions == nil {
		o.Partitions = DefaultPartitions()
	}
	o.Partitions = slices.Clone(o.Partitions)
	for i := range o.Partitions {
		if o.Partitions[i].TokenLabel == "" {
			o.Partitions[i].TokenLabel = o.Partitions[i].Name
		}
	}
	if o.Keys == nil {
		o.Keys = DefaultKeys()
	}
	if o.LocalRegion == "" {
		o.LocalRegion = "eastus"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$`)

func (o Options) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("softhsmtest: "+format, args...)) }
	if len(o.Devices) == 0 {
		bad("no devices")
	}
	if len(o.Partitions) == 0 {
		bad("no partitions")
	}
	parts := map[string]bool{}
	labels := map[string]bool{}
	for _, p := range o.Partitions {
		if !nameRE.MatchString(p.Name) {
			bad("partition name %q: want 1-40 of [A-Za-z0-9._-]", p.Name)
		}
		if parts[p.Name] {
			bad("partition %q listed twice", p.Name)
		}
		parts[p.Name] = true
		if len(p.TokenLabel) > 32 {
			bad("partition %q: token label %q is longer than 32 bytes", p.Name, p.TokenLabel)
		}
		if labels[p.TokenLabel] {
			bad("token label %q used twice", p.TokenLabel)
		}
		labels[p.TokenLabel] = true
		if len(p.PIN) < 4 || len(p.SOPIN) < 4 {
			bad("partition %q: PIN and SO PIN must have at least 4 characters (SoftHSM)", p.Name)
		}
	}
	keys := map[string]bool{}
	ids := map[string]bool{}
	for _, k := range o.Keys {
		if k.Label == "" || len(k.ID) == 0 {
			bad("key %q: label and id are required", k.Label)
		}
		if keys[k.Label] || ids[string(k.ID)] {
			bad("key %q (id %x): label or id used twice", k.Label, k.ID)
		}
		keys[k.Label], ids[string(k.ID)] = true, true
		if !validKind(k.Kind) {
			bad("key %q: unknown kind %q (want %s, %s, %s or %s)", k.Label, k.Kind, KindRSA2048, KindECP256, KindECP384, KindEd25519)
		}
	}
	for _, k := range o.SecretKeys {
		if k.Label == "" || len(k.ID) == 0 {
			bad("secret key %q: label and id are required", k.Label)
		}
		if keys[k.Label] || ids[string(k.ID)] {
			bad("secret key %q (id %x): label or id used twice", k.Label, k.ID)
		}
		keys[k.Label], ids[string(k.ID)] = true, true
		if _, ok := secretKinds[k.Kind]; !ok {
			bad("secret key %q: unknown kind %q", k.Label, k.Kind)
		}
	}
	devs := map[string]bool{}
	for _, d := range o.Devices {
		if !nameRE.MatchString(d.Name) {
			bad("device name %q: want 1-40 of [A-Za-z0-9._-]", d.Name)
		}
		if devs[d.Name] {
			bad("device %q listed twice", d.Name)
		}
		devs[d.Name] = true
		if d.Region == "" {
			bad("device %q: no region", d.Name)
		}
		if d.Delay < 0 {
			bad("device %q: negative delay", d.Name)
		}
		for _, l := range slices.Concat(d.MissingKeys, d.DifferentKeys) {
			if !keys[l] {
				bad("device %q: unknown key label %q", d.Name, l)
			}
		}
		for p, pin := range d.PINOverride {
			if !parts[p] {
				bad("device %q: PINOverride for unknown partition %q", d.Name, p)
			}
			if len(pin) < 4 {
				bad("device %q: PINOverride for %q must have at least 4 characters", d.Name, p)
			}
		}
	}
	return errors.Join(errs...)
}

// Start builds the tokens of every device, starts the device servers and relays, and returns once
// every device accepts connections. ctx bounds the start only, not the life of the devices. On error,
// everything started is stopped again.
func Start(ctx context.Context, opts Options) (*Topology, error) {
	began := time.Now()
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	tools, err := LookupTools()
	if err != nil {
		return nil, err
	}
	if opts.Certificates && tools.PKCS11Tool == "" {
		return nil, fmt.Errorf("softhsmtest: Options.Certificates: program pkcs11-tool not found: install the Debian package opensc")
	}
	t := &Topology{
		Partitions:   opts.Partitions,
		KeySpecs:     slices.Clone(opts.Keys),
		LocalRegion:  opts.LocalRegion,
		Keys:         make(map[string]crypto.Signer),
		Certificates: make(map[string][]byte),
		logf:         opts.Logf,

		SecretKeySpecs: slices.Clone(opts.SecretKeys),
		SecretKeys:     make(map[string][]byte),
	}
	if opts.Dir == "" {
		if t.Dir, err = os.MkdirTemp("", "softhsmtest-"); err != nil {
			return nil, err
		}
		t.ownDir = true
	} else {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, err
		}
		if t.Dir, err = filepath.Abs(opts.Dir); err != nil {
			return nil, err
		}
	}
	started := false
	defer func() {
		if !started {
			_ = t.Close()
		}
	}()

	if err := t.createDevices(opts, tools); err != nil {
		return nil, err
	}
	if err := t.generateKeys(ctx, opts); err != nil {
		return nil, err
	}
	keysDone := time.Now()
	if err := t.buildTokens(ctx, opts, tools); err != nil {
		return nil, err
	}
	tokensDone := time.Now()
	if err := t.startDevices(ctx, opts); err != nil {
		return nil, err
	}
	t.logf("softhsmtest: %d devices x %d partitions x %d keys ready in %v (keys %v, tokens %v, servers %v) in %s",
		len(t.Devices), len(t.Partitions), len(t.KeySpecs), time.Since(began).Round(time.Millisecond),
		keysDone.Sub(began).Round(time.Millisecond), tokensDone.Sub(keysDone).Round(time.Millisecond),
		time.Since(tokensDone).Round(time.Millisecond), t.Dir)
	started = true
	return t, nil
}

// Device returns the device with that name, or nil.
func (t *Topology) Device(name string) *Device {
	for _, d := range t.Devices {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Partition returns the partition with that name, or false.
func (t *Topology) Partition(name string) (PartitionSpec, bool) {
	for _, p := range t.Partitions {
		if p.Name == name {
			return p, true
		}
	}
	return PartitionSpec{}, false
}

// Close stops every relay (closing client connections), kills every process group (SIGCONT, SIGKILL)
// and waits until no process is left, then removes the socket directory and, if Start created it, the
// topology directory. It is idempotent and safe on a partly started topology.
func (t *Topology) Close() error {
	t.closeOnce.Do(func() {
		errs := make([]error, len(t.Devices))
		var wg sync.WaitGroup
		for i, d := range t.Devices {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = d.close()
			}()
		}
		wg.Wait()
		if t.sockDir != "" {
			errs = append(errs, os.RemoveAll(t.sockDir))
		}
		if t.ownDir {
			errs = append(errs, os.RemoveAll(t.Dir))
		}
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// LogServerLogs writes the tail of every device server's log through Options.Logf: what a failed test
// shows before Close removes the logs.
func (t *Topology) LogServerLogs() {
	for _, d := range t.Devices {
		if tail := logTail(d.LogPath, 4096); tail != "" {
			t.logf("softhsmtest: device %s: server log %s:\n%s", d.Name, d.LogPath, tail)
		}
	}
}

// Unix socket paths must fit in sun_path (108 bytes with the NUL); p11-kit's address syntax is happier
// without unusual characters.
const maxSocketPath = 100

var safePathRE = regexp.MustCompile(`^[A-Za-z0-9/._+-]*$`)

func (t *Topology) createDevices(opts Options, tools Tools) error {
	longest := ""
	for _, s := range opts.Devices {
		if len(s.Name) > len(longest) {
			longest = s.Name
		}
	}
	sockDir := func(name string) string { return filepath.Join(t.Dir, name) }
	sockName := func(name, kind string) string { return kind + ".sock" }
	if probe := filepath.Join(t.Dir, longest, "server.sock"); len(probe) > maxSocketPath || !safePathRE.MatchString(probe) {
		dir, err := os.MkdirTemp("", "hsm")
		if err != nil {
			return err
		}
		t.sockDir = dir
		if probe := filepath.Join(dir, longest+"-server.sock"); len(probe) > maxSocketPath || !safePathRE.MatchString(probe) {
			return fmt.Errorf("softhsmtest: socket path %s too long or unusual: set TMPDIR to a short plain directory", probe)
		}
		sockDir = func(string) string { return dir }
		sockName = func(name, kind string) string { return name + "-" + kind + ".sock" }
	}
	for _, s := range opts.Devices {
		d := &Device{
			Name:         s.Name,
			Region:       s.Region,
			InProcess:    s.InProcess,
			Dir:          filepath.Join(t.Dir, s.Name),
			Keys:         make(map[string]crypto.Signer),
			Certificates: make(map[string][]byte),
			SecretKeys:   make(map[string][]byte),
			PINs:         make(map[string]string),
			Serials:      make(map[string]string),
			tools:        tools,
			logf:         t.logf,
			tokenLabels:  make([]string, 0, len(opts.Partitions)),
		}
		d.ConfPath = filepath.Join(d.Dir, "softhsm2.conf")
		d.TokenDir = filepath.Join(d.Dir, "tokens")
		d.LogPath = filepath.Join(d.Dir, "server.log")
		for _, p := range opts.Partitions {
			d.tokenLabels = append(d.tokenLabels, p.TokenLabel)
			d.PINs[p.Name] = p.PIN
			if pin, ok := s.PINOverride[p.Name]; ok {
				d.PINs[p.Name] = pin
			}
		}
		if err := os.Mkdir(d.Dir, 0o755); err != nil {
			return fmt.Errorf("softhsmtest: device directory: %w (does %s already hold a topology?)", err, t.Dir)
		}
		t.Devices = append(t.Devices, d) // from here on, Close handles it
		if err := os.Mkdir(d.TokenDir, 0o700); err != nil {
			return err
		}
		if err := writeConf(d.ConfPath, d.TokenDir); err != nil {
			return err
		}
		if s.InProcess {
			d.ModulePath = filepath.Join(d.Dir, "libsofthsm2-"+s.Name+".so")
			if err := copyFile(tools.SoftHSMModule, d.ModulePath, 0o755); err != nil {
				return fmt.Errorf("softhsmtest: device %s: copy %s: %w", s.Name, tools.SoftHSMModule, err)
			}
			d.ModuleEnv = map[string]string{"SOFTHSM2_CONF": d.ConfPath}
			if s.Delay != 0 {
				t.logf("softhsmtest: device %s is in-process: its delay %v is ignored", s.Name, s.Delay)
			}
			continue
		}
		d.Socket = filepath.Join(sockDir(s.Name), sockName(s.Name, "relay"))
		d.ServerSocket = filepath.Join(sockDir(s.Name), sockName(s.Name, "server"))
		d.ModulePath = tools.P11KitClient
		d.ModuleEnv = map[string]string{"P11_KIT_SERVER_ADDRESS": "unix:path=" + d.Socket}
	}
	return nil
}

// generateKeys generates (or takes from the process-wide cache) every key and writes them as PKCS#8
// PEM files under <Dir>/keys.
func (t *Topology) generateKeys(ctx context.Context, opts Options) error {
	keysDir := filepath.Join(t.Dir, "keys")
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return err
	}
	var mu sync.Mutex
	g := newGroup(ctx, 4)
	for _, k := range opts.Keys {
		g.Go(func(context.Context) error {
			key, err := testKey(k.Kind, k.Label, "")
			if err != nil {
				return err
			}
			mu.Lock()
			t.Keys[k.Label] = key
			mu.Unlock()
			if err := writeKeyPEM(t.keyPEM("", k.Label), key); err != nil {
				return err
			}
			return t.makeCertificate(opts, &mu, t.Certificates, k, "")
		})
	}
	for i, s := range opts.Devices {
		d := t.Devices[i]
		for _, k := range opts.Keys {
			if slices.Contains(s.MissingKeys, k.Label) || !slices.Contains(s.DifferentKeys, k.Label) {
				continue
			}
			g.Go(func(context.Context) error {
				key, err := testKey(k.Kind, k.Label, s.Name)
				if err != nil {
					return err
				}
				mu.Lock()
				d.Keys[k.Label] = key
				mu.Unlock()
				if err := os.MkdirAll(filepath.Dir(t.keyPEM(s.Name, k.Label)), 0o700); err != nil {
					return err
				}
				if err := writeKeyPEM(t.keyPEM(s.Name, k.Label), key); err != nil {
					return err
				}
				return t.makeCertificate(opts, &mu, d.Certificates, k, s.Name)
			})
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, s := range opts.Devices {
		for _, k := range opts.Keys {
			if !slices.Contains(s.MissingKeys, k.Label) && !slices.Contains(s.DifferentKeys, k.Label) {
				t.Devices[i].Keys[k.Label] = t.Keys[k.Label]
				if c, ok := t.Certificates[k.Label]; ok {
					t.Devices[i].Certificates[k.Label] = c
				}
			}
		}
	}
	return nil
}

// keyPEM is the PEM file of the normal key (device "") or of a device's different key.
func (t *Topology) keyPEM(device, label string) string {
	file := strings.NewReplacer("/", "_", "\x00", "_").Replace(label) + ".pem"
	if device == "" {
		return filepath.Join(t.Dir, "keys", file)
	}
	return filepath.Join(t.Dir, "keys", device, file)
}

// makeCertificate gets (from the process-wide cache) the certificate of key k's variant, when opts asks
// for certificates, writes its DER file beside the key's PEM and records it in certs (under mu).
func (t *Topology) makeCertificate(opts Options, mu *sync.Mutex, certs map[string][]byte, k KeySpec, variant string) error {
	if !opts.Certificates {
		return nil
	}
	der, err := testCert(k.Kind, k.Label, variant)
	if err != nil {
		return err
	}
	mu.Lock()
	certs[k.Label] = der
	mu.Unlock()
	return writeCertFile(t.certDER(variant, k.Label), der)
}

// certDER is the certificate file of a key's PEM file (keyPEM).
func (t *Topology) certDER(device, label string) string {
	return strings.TrimSuffix(t.keyPEM(device, label), ".pem") + ".cert.der"
}

// buildTokens gives every device one token per partition, a copy of a token image with a serial of its
// own. Images are built with softhsm2-util (at most 4 at a time) once per process and recipe: label,
// PINs and keys, so devices with key or PIN faults get images of their own.
func (t *Topology) buildTokens(ctx context.Context, opts Options, tools Tools) error {
	buildDir := filepath.Join(t.Dir, "build")
	defer os.RemoveAll(buildDir)
	type job struct {
		d       *Device
		p       PartitionSpec
		pin     string
		imports []importItem
		secrets []secretItem
		recipe  string
	}
	var jobs []*job
	var builds []*job // the first job of each recipe
	images := map[string]*tokenImage{}
	for di, s := range opts.Devices {
		d := t.Devices[di]
		for _, p := range opts.Partitions {
			j := &job{d: d, p: p, pin: d.PINs[p.Name]}
			for _, k := range opts.Keys {
				variant := ""
				switch {
				case slices.Contains(s.MissingKeys, k.Label):
					continue
				case slices.Contains(s.DifferentKeys, k.Label):
					variant = s.Name
				}
				im := importItem{
					ident:   fmt.Sprintf("%s/%s/%s/%x", k.Kind, k.Label, variant, k.ID),
					pemPath: t.keyPEM(variant, k.Label),
					label:   k.Label,
					id:      k.ID,
				}
				if opts.Certificates {
					im.ident += "/cert"
					im.certPath = t.certDER(variant, k.Label)
				}
				j.imports = append(j.imports, im)
			}
			if err := t.secretItems(opts, s, d, &j.secrets); err != nil {
				return err
			}
			j.recipe = fmt.Sprintf("%q %q %q", p.TokenLabel, j.pin, p.SOPIN)
			for _, im := range j.imports {
				j.recipe += " " + strconv.Quote(im.ident)
			}
			for _, sk := range j.secrets {
				j.recipe += fmt.Sprintf(" secret/%q/%x/%x", sk.Label, sk.ID, sk.Value)
			}
			jobs = append(jobs, j)
			if _, ok := images[j.recipe]; !ok {
				images[j.recipe] = nil
				builds = append(builds, j)
			}
		}
	}
	built := make([]*tokenImage, len(builds))
	g := newGroup(ctx, 4)
	for i, j := range builds {
		g.Go(func(ctx context.Context) error {
			img, err := cachedTokenImage(ctx, j.recipe, func(ctx context.Context) (*tokenImage, error) {
				dir, err := buildToken(ctx, tools, filepath.Join(buildDir, strconv.Itoa(i)), j.p.TokenLabel, j.pin, j.p.SOPIN, j.imports, j.secrets)
				if err != nil {
					return nil, err
				}
				return readTokenImage(dir)
			})
			built[i] = img
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, j := range builds {
		images[j.recipe] = built[i]
	}
	for i, j := range jobs {
		img := images[j.recipe]
		if img == nil {
			return fmt.Errorf("softhsmtest: internal error: no token image for %s", j.recipe)
		}
		serial, err := img.clone(j.d.TokenDir)
		if err != nil {
			// Unknown token file format: initialise this token for real.
			t.logf("softhsmtest: device %s: cannot copy token %q (%v): initialising it", j.d.Name, j.p.TokenLabel, err)
			dir, err := buildToken(ctx, tools, filepath.Join(buildDir, "direct", strconv.Itoa(i)), j.p.TokenLabel, j.pin, j.p.SOPIN, j.imports, j.secrets)
			if err != nil {
				return err
			}
			dst := filepath.Join(j.d.TokenDir, filepath.Base(dir))
			if err := os.Rename(dir, dst); err != nil {
				return err
			}
			serial, _ = readSerial(dst)
		}
		j.d.Serials[j.p.Name] = serial
	}
	return nil
}

// startDevices starts every server (concurrently) and its relay.
func (t *Topology) startDevices(ctx context.Context, opts Options) error {
	g := newGroup(ctx, 4)
	for i, s := range opts.Devices {
		d := t.Devices[i]
		if d.InProcess {
			continue
		}
		g.Go(func(ctx context.Context) error {
			if err := d.Start(ctx); err != nil {
				return err
			}
			r, err := newRelay("unix", d.Socket, "unix", d.ServerSocket, s.Delay)
			if err != nil {
				return fmt.Errorf("softhsmtest: device %s: relay: %w", d.Name, err)
			}
			d.relay = r // read by others only after Start returns (or by Close after g.Wait)
			return nil
		})
	}
	return g.Wait()
}
