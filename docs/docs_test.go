package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// externalQualifiers are packages outside the repository that ARCHITECTURE.md names identifiers of: those
// citations are not checked.
var externalQualifiers = map[string]bool{
	"crypto": true, "rsa": true, "ecdsa": true, "context": true, "testing": true, "slog": true, "errors": true,
	"gobreaker": true, "pkcs11": true, "prometheus": true, "os": true, "time": true, "http": true,
	"hmac": true, "cipher": true, "tls": true, "bufio": true, "encoding": true, "net": true, "x509": true,
	"tableflip": true, "grpc": true, "kmsv2": true,
}

var (
	backticked = regexp.MustCompile("`([^`\n]+)`")
	identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\*?$`)
	cConstant  = regexp.MustCompile(`^[A-Z0-9_]+$`) // CKR_…, SO_PEERCRED, SOFTHSM2_CONF: not Go
	fileSuffix = regexp.MustCompile(`\.(go|md|yaml|yml|json|txt|java|service|conf|png)$`)
	version    = regexp.MustCompile(`(^|/)v[0-9X]+\.`) // a release tag, vX.Y.Z
)

// TestArchitectureCitations: every repository path and every Go identifier ARCHITECTURE.md cites in
// backticks exists. A path is found from the repository root or as the tail of a path in it
// (`internal/p11rpc` under cmd/hsm-ha-proxy); an identifier is a declaration in the repository's Go files,
// bare (`ErrNoDevice`), under its receiver or struct (`Router.Pick`, `DeviceError.Class`) or its package
// (`failover.Do`); a trailing * is a prefix (`health.Default*`). Identifiers are the citations with an
// upper-case letter that are not C constants (CKR_…) or PKCS#11 functions (C_Sign).
func TestArchitectureCitations(t *testing.T) {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	text, err := os.ReadFile(filepath.Join(root, "docs", "ARCHITECTURE.md"))
	require.NoError(t, err)
	paths, names := index(t, root)

	checked := map[string]bool{}
	for _, m := range backticked.FindAllStringSubmatch(string(text), -1) {
		c := strings.TrimSuffix(m[1], "()")
		if checked[c] {
			continue
		}
		checked[c] = true
		switch {
		case isPath(c):
			if !pathExists(paths, c) {
				t.Errorf("ARCHITECTURE.md cites `%s`: no such file or directory in the repository", c)
			}
		case isIdentifier(c):
			if !identExists(names, c) {
				t.Errorf("ARCHITECTURE.md cites `%s`: no such identifier in the repository's Go code", c)
			}
		}
	}
	// The check checks something: the page cites both kinds.
	require.True(t, checked["pkcs11ha/internal/errclass/class.go"] && checked["failover.Do"], "citations were read")
}

func isPath(c string) bool {
	if strings.ContainsAny(c, " :=,'\"<>{}…") || strings.Contains(c, "...") || strings.HasPrefix(c, "/") {
		return false
	}
	if strings.HasPrefix(c, "CK") && cConstant.MatchString(strings.NewReplacer("/", "", "_", "").Replace(c)) {
		return false // PKCS#11 constants written together: CKM_SHA256/384/512_HMAC
	}
	if fi, err := os.Stat(filepath.Join(runtime.GOROOT(), "src", c)); err == nil && fi.IsDir() {
		return false // a standard-library package: crypto/rand
	}
	if strings.HasSuffix(c, ".so") || strings.HasSuffix(c, ".c") || strings.HasSuffix(c, ".h") {
		return false // system libraries and p11-kit's sources
	}
	if first, _, _ := strings.Cut(c, "/"); strings.Contains(first, ".") && !fileSuffix.MatchString(first) {
		return false // a module path (github.com/…)
	}
	if version.MatchString(c) {
		return false
	}
	return strings.Contains(c, "/") || fileSuffix.MatchString(c)
}

func isIdentifier(c string) bool {
	if !identifier.MatchString(c) || cConstant.MatchString(c) || strings.HasPrefix(c, "C_") || version.MatchString(c) {
		return false
	}
	if first, _, ok := strings.Cut(c, "."); ok && externalQualifiers[first] {
		return false
	}
	return strings.ToLower(c) != c
}

func pathExists(paths map[string]bool, c string) bool {
	c = strings.TrimSuffix(c, "/")
	if paths[c] {
		return true
	}
	for p := range paths {
		if strings.HasSuffix(p, "/"+c) {
			return true
		}
		// A glob (`p11front/admin*.go`) matches the tail of a path.
		if strings.Contains(c, "*") {
			if i := strings.LastIndex(p, "/"+strings.SplitN(c, "/", 2)[0]+"/"); i >= 0 {
				if ok, _ := filepath.Match(c, p[i+1:]); ok {
					return true
				}
			}
		}
	}
	return false
}

func identExists(names map[string]bool, c string) bool {
	if prefix, ok := strings.CutSuffix(c, "*"); ok {
		for n := range names {
			if strings.HasPrefix(n, prefix) {
				return true
			}
		}
		return false
	}
	return names[c]
}

// index lists the repository's files and directories (relative, slash-separated) and the names its Go files
// declare: each bare, under its receiver or struct type, and under its package name.
func index(t *testing.T, root string) (paths, names map[string]bool) {
	paths, names = map[string]bool{}, map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && rel != "." {
			return filepath.SkipDir
		}
		paths[rel] = true
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		declare(names, f)
		return nil
	})
	require.NoError(t, err)
	return paths, names
}

func declare(names map[string]bool, f *ast.File) {
	pkg := f.Name.Name
	add := func(qual, name string) {
		names[name] = true
		names[pkg+"."+name] = true
		if qual != "" {
			names[qual+"."+name] = true
			names[pkg+"."+qual+"."+name] = true
		}
	}
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			add(receiver(d), d.Name.Name)
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				switch s := spec.(type) {
				case *ast.TypeSpec:
					add("", s.Name.Name)
					members(s, func(m string) { add(s.Name.Name, m) })
				case *ast.ValueSpec:
					for _, n := range s.Names {
						add("", n.Name)
					}
				}
			}
		}
	}
}

// receiver is the type name of a method's receiver, or "" for a function.
func receiver(d *ast.FuncDecl) string {
	if d.Recv == nil || len(d.Recv.List) == 0 {
		return ""
	}
	x := d.Recv.List[0].Type
	for {
		switch e := x.(type) {
		case *ast.StarExpr:
			x = e.X
		case *ast.IndexExpr:
			x = e.X
		case *ast.IndexListExpr:
			x = e.X
		case *ast.Ident:
			return e.Name
		default:
			return ""
		}
	}
}

// members calls fn with the fields of a struct type and the methods of an interface type.
func members(s *ast.TypeSpec, fn func(string)) {
	var fields *ast.FieldList
	switch tt := s.Type.(type) {
	case *ast.StructType:
		fields = tt.Fields
	case *ast.InterfaceType:
		fields = tt.Methods
	default:
		return
	}
	for _, f := range fields.List {
		for _, n := range f.Names {
			fn(n.Name)
		}
		if len(f.Names) == 0 { // embedded: the type's name is the field's
			if id, ok := f.Type.(*ast.Ident); ok {
				fn(id.Name)
			}
		}
	}
}
