package softhsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// Secret key kinds for SecretKeySpec.Kind.
const (
	KindAES128     = "aes128"
	KindAES256     = "aes256"
	KindHMACSHA256 = "hmac-sha256" // CKK_SHA256_HMAC
	KindHMACSHA384 = "hmac-sha384" // CKK_SHA384_HMAC
	KindGeneric    = "generic"     // CKK_GENERIC_SECRET, 64 bytes (SoftHSM wants a key as long as the HMAC output)
)

// SecretKeySpec is a secret key (CKO_SECRET_KEY) created in every token of every device, sensitive and
// not extractable, like a key unwrapped into an HSM.
type SecretKeySpec struct {
	Label string
	ID    []byte
	Kind  string // KindAES128, KindAES256, KindHMACSHA256, KindHMACSHA384 or KindGeneric
}

// DefaultSecretKeys are aes-key (id 10, AES-256) and hmac-key (id 11, CKK_SHA256_HMAC). Options.SecretKeys
// is empty unless a test asks: secret keys cost one more process per token image.
func DefaultSecretKeys() []SecretKeySpec {
	return []SecretKeySpec{
		{Label: "aes-key", ID: []byte{0x10}, Kind: KindAES256},
		{Label: "hmac-key", ID: []byte{0x11}, Kind: KindHMACSHA256},
	}
}

var secretKinds = map[string]struct {
	keyType uint
	size    int
}{
	KindAES128:     {pkcs11.CKK_AES, 16},
	KindAES256:     {pkcs11.CKK_AES, 32},
	KindHMACSHA256: {pkcs11.CKK_SHA256_HMAC, 32},
	KindHMACSHA384: {pkcs11.CKK_SHA384_HMAC, 48},
	KindGeneric:    {pkcs11.CKK_GENERIC_SECRET, 64},
}

// secretCache holds the process-wide secret key values per (kind, label, variant), as keyCache does.
var secretCache struct {
	mu sync.Mutex
	m  map[string][]byte
}

// testSecret returns the process-wide value of the secret key (kind, label, variant).
func testSecret(kind, label, variant string) ([]byte, error) {
	k, ok := secretKinds[kind]
	if !ok {
		return nil, fmt.Errorf("softhsmtest: unknown secret key kind %q", kind)
	}
	name := kind + "\x00" + label + "\x00" + variant
	secretCache.mu.Lock()
	defer secretCache.mu.Unlock()
	if v := secretCache.m[name]; v != nil {
		return v, nil
	}
	if secretCache.m == nil {
		secretCache.m = make(map[string][]byte)
	}
	v := make([]byte, k.size)
	if _, err := rand.Read(v); err != nil {
		return nil, err
	}
	secretCache.m[name] = v
	return v, nil
}

// secretItem is one secret key to create in a token.
type secretItem struct {
	Label   string
	ID      []byte
	KeyType uint
	Value   []byte
}

// createSecretsRequest is what the parent sends a secret-key creator process on its stdin.
type createSecretsRequest struct {
	Module, Token, PIN string
	Keys               []secretItem
}

// createSecretsEnv marks a process started by createSecrets.
const createSecretsEnv = "SOFTHSMTEST_CREATE_SECRETS"

// SoftHSM's softhsm2-util imports AES keys only, and pkcs11-tool 0.23 cannot write generic secrets, so
// secret keys are created with C_CreateObject — in a process of their own (this binary, re-executed),
// because SoftHSM reads SOFTHSM2_CONF from the environment at C_Initialize and this process's environment
// belongs to the clusters under test.
func init() {
	if os.Getenv(createSecretsEnv) == "1" {
		if err := runCreateSecrets(); err != nil {
			fmt.Fprintln(os.Stderr, "softhsmtest: create secret keys:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// createSecrets creates keys in the token label of the SoftHSM configuration conf.
func createSecrets(ctx context.Context, tools Tools, conf, label, pin string, keys []secretItem) error {
	if len(keys) == 0 {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	req, err := json.Marshal(createSecretsRequest{Module: tools.SoftHSMModule, Token: label, PIN: pin, Keys: keys})
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = envWith(map[string]string{"SOFTHSM2_CONF": conf, createSecretsEnv: "1"})
	cmd.Stdin = bytes.NewReader(req)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("softhsmtest: token %q: create secret keys: %w (%s)", label, err, bytes.TrimSpace(out))
	}
	return nil
}

func runCreateSecrets() error {
	var req createSecretsRequest
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return err
	}
	c := pkcs11.New(req.Module)
	if c == nil {
		return fmt.Errorf("cannot load %s", req.Module)
	}
	if err := c.Initialize(); err != nil {
		return err
	}
	defer c.Finalize()
	slot, err := findTokenSlot(c, req.Token)
	if err != nil {
		return err
	}
	s, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	if err := c.Login(s, pkcs11.CKU_USER, req.PIN); err != nil {
		return err
	}
	for _, k := range req.Keys {
		aes := k.KeyType == pkcs11.CKK_AES
		if _, err := c.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, k.KeyType),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, k.Label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, k.Value),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, aes),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, aes),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, !aes),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, !aes),
		}); err != nil {
			return fmt.Errorf("key %q: %w", k.Label, err)
		}
	}
	return c.Logout(s)
}

func findTokenSlot(c *pkcs11.Ctx, label string) (uint, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, err
	}
	for _, sl := range slots {
		ti, err := c.GetTokenInfo(sl)
		if err == nil && trimLabel(ti.Label) == label {
			return sl, nil
		}
	}
	return 0, fmt.Errorf("token %q not found", label)
}

func trimLabel(s string) string { return string(bytes.TrimRight([]byte(s), " \x00")) }

// secretItems appends to *out the secret keys device d (spec s) holds: Options.SecretKeys without its
// MissingKeys, with a value of its own for its DifferentKeys. It records the values in d.SecretKeys and,
// for the common values, t.SecretKeys.
func (t *Topology) secretItems(opts Options, s DeviceSpec, d *Device, out *[]secretItem) error {
	for _, k := range opts.SecretKeys {
		variant := ""
		switch {
		case slices.Contains(s.MissingKeys, k.Label):
			continue
		case slices.Contains(s.DifferentKeys, k.Label):
			variant = s.Name
		}
		v, err := testSecret(k.Kind, k.Label, variant)
		if err != nil {
			return err
		}
		if variant == "" {
			t.SecretKeys[k.Label] = v
		}
		d.SecretKeys[k.Label] = v
		*out = append(*out, secretItem{Label: k.Label, ID: k.ID, KeyType: secretKinds[k.Kind].keyType, Value: v})
	}
	return nil
}
