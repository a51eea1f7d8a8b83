package softhsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// writeConf writes a softhsm2.conf with a file object store in tokenDir.
func writeConf(path, tokenDir string) error {
	conf := fmt.Sprintf("# written by softhsmtest\ndirectories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokenDir)
	return os.WriteFile(path, []byte(conf), 0o644)
}

// importItem is one key pair imported into a token.
type importItem struct {
	ident    string // identity of the key (kind, label, variant) and id, for the image cache
	pemPath  string
	certPath string // the key's certificate (DER) to write beside it, or ""
	label    string
	id       []byte
}

// buildToken initialises one token in a scratch SoftHSM directory of its own (so that tokens can be built
// concurrently without sharing a token directory) and imports the keys. It returns the token's directory
// (<scratch>/tokens/<uuid>), to be moved or cloned into a device's token directory.
func buildToken(ctx context.Context, tools Tools, scratch, label, pin, soPIN string, imports []importItem, secrets []secretItem) (string, error) {
	tokens := filepath.Join(scratch, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", err
	}
	conf := filepath.Join(scratch, "softhsm2.conf")
	if err := writeConf(conf, tokens); err != nil {
		return "", err
	}
	if err := runUtil(ctx, tools, conf, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPIN); err != nil {
		return "", err
	}
	for _, im := range imports {
		if err := runUtil(ctx, tools, conf, "--import", im.pemPath, "--token", label, "--label", im.label,
			"--id", hex.EncodeToString(im.id), "--pin", pin); err != nil {
			return "", err
		}
		if im.certPath != "" {
			if err := writeCertificate(ctx, tools, conf, label, pin, im.certPath, im.label, im.id); err != nil {
				return "", err
			}
		}
	}
	if err := createSecrets(ctx, tools, conf, label, pin, secrets); err != nil {
		return "", err
	}
	ents, err := os.ReadDir(tokens)
	if err != nil {
		return "", err
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(tokens, e.Name()))
		}
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("softhsmtest: token %q: expected one token directory in %s, found %d", label, tokens, len(dirs))
	}
	return dirs[0], nil
}

func runUtil(ctx context.Context, tools Tools, conf string, args ...string) error {
	cmd := exec.CommandContext(ctx, tools.SoftHSMUtil, args...)
	cmd.Env = envWith(map[string]string{"SOFTHSM2_CONF": conf})
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("softhsmtest: SOFTHSM2_CONF=%s softhsm2-util %s: %w: %s", conf, redactPINs(args), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// redactPINs hides PIN values in an argument list for error messages.
func redactPINs(args []string) string {
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "--pin" || out[i] == "--so-pin" {
			out[i+1] = "***"
		}
	}
	return strings.Join(out, " ")
}

// envWith returns the environment of this process with the given variables set (and
// P11_KIT_SERVER_ADDRESS removed unless given, so that a test's setting never leaks into a child).
func envWith(set map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, ok := set[name]; ok || name == "P11_KIT_SERVER_ADDRESS" {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env
}

// SoftHSM's file object store keeps the token serial in token.object as an attribute record:
// 8-byte type CKA_OS_TOKENSERIAL (0x8000534A), 8-byte kind 3 (byte string), 8-byte length, the bytes.
// SoftHSM derives the serial from the token directory's UUID at C_InitToken (its last 16 hex digits).
const attrTokenSerial = 0x8000534A

func serialRecord(data []byte) (offset, length int, err error) {
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[0:], attrTokenSerial)
	binary.BigEndian.PutUint64(hdr[8:], 3)
	i := bytes.Index(data, hdr[:])
	if i < 0 || bytes.Contains(data[i+1:], hdr[:]) {
		return 0, 0, errors.New("token serial record not found exactly once")
	}
	if i+24 > len(data) {
		return 0, 0, errors.New("token serial record truncated")
	}
	n := binary.BigEndian.Uint64(data[i+16 : i+24])
	if n == 0 || n > 64 || i+24+int(n) > len(data) {
		return 0, 0, fmt.Errorf("token serial record has bad length %d", n)
	}
	return i + 24, int(n), nil
}

// readSerial returns the serial number of the token in tokenDir.
func readSerial(tokenDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(tokenDir, "token.object"))
	if err != nil {
		return "", err
	}
	off, n, err := serialRecord(data)
	if err != nil {
		return "", fmt.Errorf("softhsmtest: %s: %w", tokenDir, err)
	}
	return string(data[off : off+n]), nil
}

// newTokenUUID returns a random UUID formatted like SoftHSM's token directory names and the serial
// SoftHSM would derive from it.
func newTokenUUID() (uuid, serial string, err error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	h := hex.EncodeToString(b[:])
	uuid = h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	return uuid, h[16:32], nil
}

// tokenImage is an initialised token (the files of its directory), kept in memory so that any number
// of devices can get a copy. A copy is a perfect clone of the keys but, like a partition on another HSM,
// gets a serial number of its own.
type tokenImage struct {
	files  map[string][]byte
	serial string // the serial in the image's token.object
}

func readTokenImage(dir string) (*tokenImage, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	img := &tokenImage{files: make(map[string][]byte, len(ents))}
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.Contains(e.Name(), "/") {
			return nil, fmt.Errorf("softhsmtest: %s: unexpected %s in a token directory", dir, e.Name())
		}
		if img.files[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
	}
	obj, ok := img.files["token.object"]
	if !ok {
		return nil, fmt.Errorf("softhsmtest: %s: no token.object", dir)
	}
	// An unknown file format leaves serial empty: such an image cannot be cloned.
	if off, n, err := serialRecord(obj); err == nil && n == 16 {
		img.serial = string(obj[off : off+n])
	}
	return img, nil
}

// clone writes a copy of the token into tokensDir under a new UUID, with the serial number SoftHSM
// derives from that UUID, as if the token had been initialised there. It returns the new serial.
func (img *tokenImage) clone(tokensDir string) (string, error) {
	if img.serial == "" {
		return "", errors.New("softhsmtest: token serial record not found: unknown SoftHSM file format")
	}
	uuid, serial, err := newTokenUUID()
	if err != nil {
		return "", err
	}
	dst := filepath.Join(tokensDir, uuid)
	if err := os.Mkdir(dst, 0o700); err != nil {
		return "", err
	}
	for name, data := range img.files {
		if name == "token.object" {
			data = bytes.Clone(data)
			off, n, err := serialRecord(data)
			if err != nil || n != len(serial) {
				return "", fmt.Errorf("softhsmtest: cannot rewrite the token serial (%v)", err)
			}
			copy(data[off:off+n], serial)
		}
		if err := os.WriteFile(filepath.Join(dst, name), data, 0o600); err != nil {
			return "", err
		}
	}
	return serial, nil
}

// Token images are built once per process and recipe (token label, PINs, keys), because softhsm2-util
// takes ~40 ms per command.
var imageCache struct {
	mu sync.Mutex
	m  map[string]*imageEntry
}

type imageEntry struct {
	done chan struct{}
	img  *tokenImage
	err  error
}

// cachedTokenImage returns the image for key, building it with build if no other caller has (or is
// building it now). A failed build is not cached.
func cachedTokenImage(ctx context.Context, key string, build func(context.Context) (*tokenImage, error)) (*tokenImage, error) {
	for {
		imageCache.mu.Lock()
		if imageCache.m == nil {
			imageCache.m = make(map[string]*imageEntry)
		}
		e, found := imageCache.m[key]
		if !found {
			e = &imageEntry{done: make(chan struct{})}
			imageCache.m[key] = e
		}
		imageCache.mu.Unlock()
		if found {
			select {
			case <-e.done:
				if e.err == nil {
					return e.img, nil
				}
				continue // that build failed and has been forgotten: try ourselves
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		e.img, e.err = build(ctx)
		if e.err != nil {
			imageCache.mu.Lock()
			delete(imageCache.m, key)
			imageCache.mu.Unlock()
		}
		close(e.done)
		return e.img, e.err
	}
}

func copyFile(src, dst string, perm os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = io.Copy(out, in)
	return err
}
