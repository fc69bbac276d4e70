package doccheck

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// externalPackages are packages from outside the repo (standard library,
// dependencies, cgo's C) that docs may name as pkg.Name; their members are
// not checked. A repo package of the same name is checked instead.
var externalPackages = map[string]bool{
	// standard library
	"atomic": true, "bufio": true, "bytes": true, "context": true, "embed": true, "errors": true,
	"exec": true, "filepath": true, "fmt": true, "fs": true, "http": true, "io": true, "json": true,
	"math": true, "net": true, "os": true, "path": true, "runtime": true, "signal": true, "slog": true,
	"sort": true, "strconv": true, "strings": true, "sync": true, "syscall": true, "tar": true,
	"testing": true, "time": true, "tls": true, "unsafe": true, "url": true,
	// dependencies: hashicorp/raft and its stores, hclog, NATS, minio-go, urfave/cli
	"raft": true, "raftboltdb": true, "wal": true, "hclog": true, "nats": true, "minio": true, "cli": true,
	// cgo
	"C": true,
}

// externalFiles are file names docs cite that are not repo files: a data
// set's manifest, files a coordinator or worker writes into its data dir or
// checkpoint prefix.
var externalFiles = map[string]bool{
	"manifest.json":    true, // a data set's manifest (shards)
	"nats-routes.json": true, // the coordinator data dir's routes file
	"config.json":      true, // the model config next to a final checkpoint
}

// repoRoot is the directory holding go.mod above the test's directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// repoFiles lists the repo's files (slash paths relative to root): what git
// tracks plus untracked files it does not ignore, or, without git, every
// file outside .git and the output directories.
func repoFiles(t *testing.T, root string) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		var files []string
		for _, f := range strings.Split(string(out), "\x00") {
			if f != "" {
				files = append(files, f)
			}
		}
		return files
	}
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			for _, o := range Outputs {
				if rel+"/" == o {
					return filepath.SkipDir
				}
			}
			return nil
		}
		files = append(files, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func inTestdata(p string) bool {
	return strings.HasPrefix(p, "testdata/") || strings.Contains(p, "/testdata/")
}

// TestRepoDocs runs the checks over the repo: every Markdown file outside
// testdata/ (paths and Go names in backticks) and every Go file's doc
// comments.
func TestRepoDocs(t *testing.T) {
	root := repoRoot(t)
	files := repoFiles(t, root)
	fset := token.NewFileSet()
	idx := NewIndex()
	var goFiles []*ast.File
	var goPaths []string
	for _, f := range files {
		if !strings.HasSuffix(f, ".go") || inTestdata(f) {
			continue
		}
		src, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f)))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted but not yet staged
		}
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(fset, f, src, parser.ParseComments)
		if err != nil {
			t.Fatalf("parse %v", err)
		}
		idx.AddFile(f, af)
		goFiles, goPaths = append(goFiles, af), append(goPaths, f)
	}
	exists := func(rel string) bool {
		_, err := os.Stat(filepath.Join(root, filepath.FromSlash(rel)))
		return err == nil
	}
	var findings []Finding
	for _, f := range files {
		if !strings.HasSuffix(f, ".md") || inTestdata(f) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f)))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		findings = append(findings, CheckMarkdown(f, string(b), exists, idx, externalPackages, externalFiles)...)
	}
	for i, af := range goFiles {
		findings = append(findings, CheckDocComments(fset, goPaths[i], af)...)
	}
	report(t, findings)
}

// report fails the test with the findings grouped by kind, each as
// file:line so an editor can jump to it.
func report(t *testing.T, findings []Finding) {
	t.Helper()
	sort.Slice(findings, func(i, j int) bool {
		a, b := findings[i], findings[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Line < b.Line
	})
	titles := map[string]string{
		KindDoc:  "Go doc comments that do not start with their declaration's name (rename the comment's subject, or fix the name):",
		KindName: "Markdown names Go identifiers the repo does not declare (fix the doc, or add an outside package to externalPackages in internal/doccheck/doccheck_test.go):",
		KindPath: "Markdown names files or directories that do not exist (fix the path; an output or outside file? see Outputs and externalFiles in internal/doccheck):",
	}
	var b bytes.Buffer
	kind := ""
	for _, f := range findings {
		if f.Kind != kind {
			kind = f.Kind
			b.WriteString("\n" + titles[kind] + "\n")
		}
		b.WriteString("  " + f.String() + "\n")
	}
	if len(findings) > 0 {
		t.Errorf("%d findings:\n%s", len(findings), b.String())
	}
}

func TestCodeSpans(t *testing.T) {
	md := "a `one` b ``two ` x`` c\n" +
		"```go\n" +
		"`inside fence`\n" +
		"```\n" +
		"`split\n" +
		"over lines` and a lone ` tick\n" +
		"\n" +
		"    ~~~\n" +
		"`after`\n"
	got := CodeSpans(md)
	want := []Span{{1, "one"}, {1, "two ` x"}, {5, "split over lines"}, {9, "after"}}
	if len(got) != len(want) {
		t.Fatalf("spans %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("span %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestPathToken(t *testing.T) {
	for _, tc := range []struct {
		span    string
		path    string
		certain bool
		ok      bool
	}{
		{"trainer/seq.go", "trainer/seq.go", true, true},
		{"fsm.go", "fsm.go", true, true},
		{"fsm.go:42", "fsm.go", true, true},
		{"collective/ring", "collective/ring", false, true},
		{"synth/", "synth/", true, true},
		{"../shared/DESIGN.md", "../shared/DESIGN.md", true, true},
		{"s3://bucket/prefix", "", false, false},
		{"file:///abs/path", "", false, false},
		{"nats://HOST:4222", "", false, false},
		{"bin/liblavit_torch.so", "", false, false},
		{"./demo-out/data", "", false, false},
		{"test-out/it-learned.txt", "", false, false},
		{"configs/*.yaml", "", false, false},
		{"add_amd64.{go,s}", "", false, false},
		{"<checkpoint.url>/<run>/final/", "", false, false},
		{"models/NAME.json", "", false, false},
		{"KEY.json", "", false, false},
		{"go test ./trainer", "", false, false},
		{"/proc/driver/nvidia", "", false, false},
		{"github.com/lavit-org/lavit", "", false, false},
		{"--set", "", false, false},
		{"data.url", "", false, false},
		{"trainer.Config", "", false, false},
	} {
		p, certain, ok := PathToken(tc.span)
		if p != tc.path || certain != tc.certain || ok != tc.ok {
			t.Errorf("PathToken(%q) = %q, %v, %v; want %q, %v, %v", tc.span, p, certain, ok, tc.path, tc.certain, tc.ok)
		}
	}
}

func TestGoNameToken(t *testing.T) {
	for _, tc := range []struct {
		span  string
		elems string // dotted; "" = not a Go name
		call  bool
	}{
		{"runspec.Keys()", "runspec.Keys", true},
		{"Model.Step(ctx, batch, reduce)", "Model.Step", true},
		{"withThread()", "withThread", true},
		{"*collective.Error", "collective.Error", false},
		{"trainer.Config", "trainer.Config", false},
		{"wire.Client.Call", "wire.Client.Call", false},
		{"Config", "", false},   // a single name: not checked
		{"data.url", "", false}, // a YAML key
		{"stage1.phase_a_steps", "", false},
		{"set_num_threads()", "", false}, // C++
		{"torch::manual_seed", "", false},
		{"round(v*255)", "", false}, // a formula
		{"state.go", "", false},     // a file
		{"README.md", "", false},
		{"dlopen(\"libnccl.so.2\")", "", false},
	} {
		elems, call, ok := GoNameToken(tc.span)
		got := strings.Join(elems, ".")
		if !ok {
			got = ""
		}
		if got != tc.elems || (ok && call != tc.call) {
			t.Errorf("GoNameToken(%q) = %q, call %v, ok %v; want %q, call %v", tc.span, got, call, ok, tc.elems, tc.call)
		}
	}
}

// synthetic is a tiny repo for the table tests: package pkg with Func,
// type T (method M, field F), and a stale doc comment.
const synthetic = `package pkg

// Func does things.
func Func() {}

// T is a type.
type T struct{ F int }

// M is a method.
func (T) M() {}

// A Widget is fine too.
type Widget int

// runIDPattern is a stale name.
func runID() {}

// (T).Old is stale.
func (t *T) New() {}

//go:noinline
func directive() {}

// Deprecated: use Func.
func old() {}

type (
	// Grouped is documented per spec.
	Grouped int
	// Wrong is not Other.
	Other int
)
`

func parseSynthetic(t *testing.T) (*token.FileSet, *ast.File, *Index) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "pkg/pkg.go", synthetic, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	idx := NewIndex()
	idx.AddFile("pkg/pkg.go", f)
	return fset, f, idx
}

func TestCheckMarkdown(t *testing.T) {
	_, _, idx := parseSynthetic(t)
	files := map[string]bool{"pkg": true, "pkg/pkg.go": true, "pkg/DESIGN.md": true, "README.md": true}
	exists := func(p string) bool { return files[p] }
	for _, tc := range []struct {
		name, md string
		file     string
		want     []string // finding messages' leading `token`, in order
	}{
		{"present paths pass", "`pkg/pkg.go`, `pkg/`, `pkg`, `README.md`", "README.md", nil},
		{"a bare name from the md file's directory passes", "`pkg.go` and `DESIGN.md`", "pkg/DESIGN.md", nil},
		{"a missing file", "see `pkg/gone.go`\nand `missing.md`", "README.md", []string{"`pkg/gone.go`", "`missing.md`"}},
		{"a missing directory under a known one", "`pkg/sub/`, `pkg/sub`", "README.md", []string{"`pkg/sub/`", "`pkg/sub`"}},
		{"outside the repo", "`../shared/DESIGN.md`", "pkg/DESIGN.md", []string{"`../shared/DESIGN.md`"}},
		{"not repo paths", "`samples/s`, `s3://b/p`, `bin/x`, `models/NAME.json`, `manifest.json`", "README.md", nil},
		{"present Go names pass", "`pkg.Func`, `pkg.Func()`, `T.M()`, `pkg.T.F`, `Func()`, `len()`, `time.Duration`, `data.url`", "README.md", nil},
		{"a missing pkg.Func", "`pkg.Gone()` and `pkg.Func`", "README.md", []string{"`pkg.Gone()`"}},
		{"a missing method", "`T.Gone`", "README.md", []string{"`T.Gone`"}},
		{"a missing unqualified func", "`Gone()`", "README.md", []string{"`Gone()`"}},
		{"an unknown qualifier", "`nopkg.Func`", "README.md", []string{"`nopkg.Func`"}},
		{"fenced code is not checked", "```\n`pkg.Gone()`\n```\n", "README.md", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CheckMarkdown(tc.file, tc.md, exists, idx, map[string]bool{"time": true}, map[string]bool{"manifest.json": true})
			if len(got) != len(tc.want) {
				t.Fatalf("findings %v, want %d naming %v", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i].Msg, w) || got[i].File != tc.file {
					t.Errorf("finding %d = %v, want one naming %s in %s", i, got[i], w, tc.file)
				}
			}
		})
	}
	// Lines are reported.
	got := CheckMarkdown("README.md", "ok\n\nsee `pkg/gone.go`", exists, idx, nil, nil)
	if len(got) != 1 || got[0].Line != 3 || got[0].Kind != KindPath {
		t.Errorf("got %v, want one path finding on line 3", got)
	}
}

func TestCheckDocComments(t *testing.T) {
	fset, f, _ := parseSynthetic(t)
	got := CheckDocComments(fset, "pkg/pkg.go", f)
	want := []struct {
		line int
		name string
	}{{15, "func runID"}, {18, "method T.New"}, {30, "type Other"}}
	if len(got) != len(want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	for i, w := range want {
		if got[i].Line != w.line || !strings.Contains(got[i].Msg, w.name) || got[i].Kind != KindDoc {
			t.Errorf("finding %d = %v, want line %d about %s", i, got[i], w.line, w.name)
		}
	}
	// Generated files are skipped.
	gen, err := parser.ParseFile(fset, "gen.go", "// Code generated by x. DO NOT EDIT.\n\npackage p\n\n// wrong\nfunc F() {}\n", parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	if got := CheckDocComments(fset, "gen.go", gen); len(got) != 0 {
		t.Errorf("generated file: %v", got)
	}
}

func TestFindingString(t *testing.T) {
	f := Finding{KindPath, "a/DESIGN.md", 3, "`x.go`: no such file or directory"}
	if got, want := f.String(), "a/DESIGN.md:3: `x.go`: no such file or directory"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
