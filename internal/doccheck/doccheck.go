// Package doccheck checks that the repo's prose names only things that
// exist: the files and Go names that Markdown files cite in backticks, and
// the declaration names that Go doc comments begin with. Its test runs the
// checks over the whole repo in `go test ./...`.
package doccheck

import (
	"fmt"
	"go/ast"
	"go/token"
	"path"
	"regexp"
	"strings"
	"unicode"
)

// Finding is one problem: the file (slash-separated, relative to the repo
// root), the line, and what is wrong.
type Finding struct {
	Kind string // KindPath, KindName or KindDoc
	File string
	Line int
	Msg  string
}

// The kinds of finding.
const (
	KindPath = "path" // a Markdown file names a missing file or directory
	KindName = "name" // a Markdown file names a missing Go name
	KindDoc  = "doc"  // a Go doc comment does not start with its declaration's name
)

func (f Finding) String() string { return fmt.Sprintf("%s:%d: %s", f.File, f.Line, f.Msg) }

// Span is the text of one inline code span and the line it opens on.
type Span struct {
	Line int
	Text string
}

// CodeSpans returns the inline code spans of a Markdown text (`x`, “x“),
// skipping fenced code blocks. A span may continue onto the next lines of
// its paragraph (line breaks become spaces); an opening run of backticks
// with no closing run of the same length before the paragraph ends is
// literal text.
func CodeSpans(md string) []Span {
	var spans []Span
	lines := strings.Split(md, "\n")
	fence := ""
	for i := 0; i < len(lines); i++ {
		trimmed := strings.TrimLeft(lines[i], " ")
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]+" \t") == "" {
				fence = ""
			}
			continue
		}
		if len(lines[i])-len(trimmed) < 4 {
			if f := fenceOf(trimmed); f != "" {
				fence = f
				continue
			}
		}
		// The paragraph from line i: up to the next blank line or fence.
		end := i + 1
		for end < len(lines) && strings.TrimSpace(lines[end]) != "" && fenceOf(strings.TrimLeft(lines[end], " ")) == "" {
			end++
		}
		spans = append(spans, paragraphSpans(lines[i:end], i+1)...)
		i = end - 1
	}
	return spans
}

// fenceOf returns the fence (``` or ~~~, as long as written) a line opens,
// or "".
func fenceOf(line string) string {
	for _, c := range []string{"`", "~"} {
		n := len(line) - len(strings.TrimLeft(line, c))
		if n >= 3 {
			return strings.Repeat(c, n)
		}
	}
	return ""
}

// paragraphSpans finds the code spans of one paragraph whose first line is
// line first.
func paragraphSpans(lines []string, first int) []Span {
	text := strings.Join(lines, "\n")
	var spans []Span
	lineAt := func(off int) int { return first + strings.Count(text[:off], "\n") }
	for i := 0; i < len(text); {
		if text[i] == '\\' {
			i += 2
			continue
		}
		if text[i] != '`' {
			i++
			continue
		}
		n := runLen(text, i)
		open := i
		i += n
		// Find a closing run of exactly n backticks.
		closed := false
		for j := i; j < len(text); {
			if text[j] != '`' {
				j++
				continue
			}
			m := runLen(text, j)
			if m == n {
				body := strings.ReplaceAll(text[i:j], "\n", " ")
				if len(body) > 1 && body[0] == ' ' && body[len(body)-1] == ' ' && strings.Trim(body, " ") != "" {
					body = body[1 : len(body)-1]
				}
				spans = append(spans, Span{Line: lineAt(open), Text: body})
				i = j + m
				closed = true
				break
			}
			j += m
		}
		if !closed {
			// A literal run of backticks; go on after it.
			continue
		}
	}
	return spans
}

func runLen(s string, i int) int {
	n := 0
	for i+n < len(s) && s[i+n] == '`' {
		n++
	}
	return n
}

// Outputs are directories that builds and runs create; paths under them are
// not expected to exist in a checkout.
var Outputs = []string{"bin/", "build/", "demo-out/", "test-out/", "bench-out/", "lavit-data/"}

// PathExts are the file extensions that make a backticked token a path even
// without a '/'.
var PathExts = []string{".go", ".md", ".yaml", ".yml", ".json", ".sh", ".cpp", ".h", ".c", ".tsv", ".txt"}

// docNames are upper-case file stems that are real file names, not
// placeholders like NAME or ID.
var docNames = map[string]bool{"README": true, "DESIGN": true, "MODEL": true, "STYLE": true, "LICENSE": true,
	"CHANGELOG": true, "CONTRIBUTING": true, "SECURITY": true, "NOTICE": true, "AUTHORS": true}

var (
	lineSuffix  = regexp.MustCompile(`^(.*\.[A-Za-z0-9]+):[0-9]+(-[0-9]+)?$`)
	placeholder = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	domain      = regexp.MustCompile(`^[a-z0-9-]+(\.[a-z0-9-]+)*\.(com|org|io|net|dev|in|edu|gov|co)$`)
)

// PathToken reports whether a code span names a repo path, and which. It
// ignores URLs, flags, absolute and home paths, globs, brace and angle
// patterns, placeholders (`models/NAME.json`), anything with spaces, and
// paths under Outputs. A `file.go:123` line suffix is dropped. certain is
// false for a slash-separated token without a known extension or a trailing
// '/', such as `collective/ring`: it names a path only if its first element
// exists (the caller decides).
func PathToken(span string) (p string, certain, ok bool) {
	t := span
	if m := lineSuffix.FindStringSubmatch(t); m != nil {
		t = m[1]
	}
	if t == "" || strings.ContainsAny(t, " \t*?[]{}<>|…\"'(),=;:@$^\\!#%&+`") || strings.Contains(t, "...") {
		return "", false, false
	}
	if strings.HasPrefix(t, "/") || strings.HasPrefix(t, "~") || strings.HasPrefix(t, "-") {
		return "", false, false
	}
	hasExt := false
	for _, e := range PathExts {
		if strings.HasSuffix(t, e) && len(t) > len(e) {
			hasExt = true
		}
	}
	if !hasExt && !strings.Contains(t, "/") {
		return "", false, false
	}
	clean := strings.TrimPrefix(t, "./")
	for _, o := range Outputs {
		if clean == strings.TrimSuffix(o, "/") || strings.HasPrefix(clean, o) {
			return "", false, false
		}
	}
	elems := strings.Split(strings.TrimSuffix(clean, "/"), "/")
	if domain.MatchString(elems[0]) {
		return "", false, false // an import path such as github.com/…
	}
	for _, e := range elems {
		stem, _, _ := strings.Cut(e, ".")
		if placeholder.MatchString(stem) && !docNames[stem] {
			return "", false, false
		}
	}
	return t, hasExt || strings.HasSuffix(t, "/"), true
}

// ResolvePath reports whether path p, cited by the Markdown file mdFile
// (both slash-separated, relative to the repo root), exists relative to the
// repo root or to mdFile's directory. exists answers for a root-relative
// path. A token that is not certainly a path (see PathToken) is checked
// only if its first element exists; uncertain and absent means "not a
// path", which also returns true.
func ResolvePath(mdFile, p string, certain bool, exists func(string) bool) bool {
	clean := strings.TrimSuffix(p, "/")
	candidates := []string{path.Clean(clean), path.Clean(path.Join(path.Dir(mdFile), clean))}
	for _, c := range candidates {
		if c == ".." || strings.HasPrefix(c, "../") {
			continue // outside the repo
		}
		if exists(c) {
			return true
		}
	}
	if !certain {
		first := strings.Split(strings.TrimPrefix(clean, "./"), "/")[0]
		if first == ".." || (!exists(first) && !exists(path.Join(path.Dir(mdFile), first))) {
			return true // not a repo path at all
		}
	}
	return false
}

// Index holds the Go names declared in the repo.
type Index struct {
	// Packages maps a package name (the package clause, without _test)
	// and its directory's last element to every top-level name declared
	// there, across all packages of that name.
	Packages map[string]map[string]bool
	// Members maps a type name to its methods and fields (struct fields,
	// embedded types, interface methods), across all types of that name.
	Members map[string]map[string]bool
	// Names is every declared top-level name, method and field.
	Names map[string]bool
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{Packages: map[string]map[string]bool{}, Members: map[string]map[string]bool{}, Names: map[string]bool{}}
}

func add(m map[string]map[string]bool, k, v string) {
	if m[k] == nil {
		m[k] = map[string]bool{}
	}
	m[k][v] = true
}

// AddFile adds a parsed Go file, at slash path file relative to the root.
func (x *Index) AddFile(file string, f *ast.File) {
	pkgs := []string{strings.TrimSuffix(f.Name.Name, "_test")}
	if dir := path.Base(path.Dir(file)); dir != "." && dir != pkgs[0] {
		pkgs = append(pkgs, dir)
	}
	top := func(name string) {
		x.Names[name] = true
		for _, p := range pkgs {
			add(x.Packages, p, name)
		}
	}
	member := func(typ, name string) {
		x.Names[name] = true
		add(x.Members, typ, name)
	}
	for _, p := range pkgs {
		if x.Packages[p] == nil {
			x.Packages[p] = map[string]bool{}
		}
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil || len(d.Recv.List) == 0 {
				top(d.Name.Name)
				continue
			}
			member(recvType(d.Recv.List[0].Type), d.Name.Name)
		case *ast.GenDecl:
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					top(s.Name.Name)
					if x.Members[s.Name.Name] == nil {
						x.Members[s.Name.Name] = map[string]bool{}
					}
					switch t := s.Type.(type) {
					case *ast.StructType:
						for _, fld := range t.Fields.List {
							if len(fld.Names) == 0 {
								member(s.Name.Name, recvType(fld.Type))
							}
							for _, n := range fld.Names {
								member(s.Name.Name, n.Name)
							}
						}
					case *ast.InterfaceType:
						for _, m := range t.Methods.List {
							for _, n := range m.Names {
								member(s.Name.Name, n.Name)
							}
						}
					}
				case *ast.ValueSpec:
					for _, n := range s.Names {
						top(n.Name)
					}
				}
			}
		}
	}
}

// recvType is the type name of a receiver or embedded field: T, *T, T[K],
// pkg.T.
func recvType(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return recvType(t.X)
	case *ast.IndexExpr:
		return recvType(t.X)
	case *ast.IndexListExpr:
		return recvType(t.X)
	case *ast.SelectorExpr:
		return t.Sel.Name
	case *ast.Ident:
		return t.Name
	}
	return ""
}

// Builtins are Go's predeclared functions: `len()` needs no declaration.
var Builtins = map[string]bool{"append": true, "cap": true, "clear": true, "close": true, "complex": true,
	"copy": true, "delete": true, "imag": true, "len": true, "make": true, "max": true, "min": true, "new": true,
	"panic": true, "print": true, "println": true, "real": true, "recover": true}

var (
	goName    = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(\(\s*(?:[A-Za-z_][A-Za-z0-9_]*\s*(?:,\s*[A-Za-z_][A-Za-z0-9_]*\s*)*)?\))?$`)
	snakeCase = regexp.MustCompile(`^[a-z0-9]+(_[a-z0-9]+)+$`)
)

// GoNameToken reports whether a code span names Go: `Name()`, `pkg.Name`,
// `pkg.Name()`, `Type.Method`, `pkg.Type.Method(args)` (argument lists of
// plain identifiers only; a leading * or & or [] is dropped). It returns
// the dotted elements and whether it is a call. Tokens whose last element
// is lower case and not a call (YAML keys like `data.url`, file names),
// single names without parentheses, and lower_snake_case elements (C, C++,
// JSON and YAML names) are not Go names here.
func GoNameToken(span string) (elems []string, call, ok bool) {
	t := strings.TrimLeft(span, "*&")
	t = strings.TrimPrefix(t, "[]")
	m := goName.FindStringSubmatch(t)
	if m == nil {
		return nil, false, false
	}
	elems, call = strings.Split(m[1], "."), m[2] != ""
	for _, e := range elems {
		if snakeCase.MatchString(e) {
			return nil, false, false
		}
	}
	last := elems[len(elems)-1]
	if len(elems) == 1 && !call {
		return nil, false, false
	}
	if !call && !unicode.IsUpper(rune(last[0])) {
		return nil, false, false
	}
	for _, e := range PathExts {
		if !call && strings.HasSuffix(t, e) {
			return nil, false, false
		}
	}
	return elems, call, true
}

// ResolveName checks a Go name (from GoNameToken) against the index and
// returns "" if it exists, else what is missing. external lists package
// names from outside the repo (standard library, dependencies) whose
// members are not checked; a repo package of the same name takes
// precedence.
func (x *Index) ResolveName(elems []string, call bool, external map[string]bool) string {
	tok := strings.Join(elems, ".")
	if call {
		tok += "()"
	}
	if len(elems) == 1 {
		if x.Names[elems[0]] || Builtins[elems[0]] {
			return ""
		}
		return fmt.Sprintf("`%s`: no func, method or type %s in the repo", tok, elems[0])
	}
	q, rest := elems[0], elems[1:]
	var why []string
	if decls, isPkg := x.Packages[q]; isPkg {
		if !decls[rest[0]] {
			why = append(why, fmt.Sprintf("package %s declares no %s", q, rest[0]))
		} else if miss := x.members(rest); miss != "" {
			why = append(why, miss)
		} else {
			return ""
		}
	}
	if _, isType := x.Members[q]; isType {
		if miss := x.members(elems); miss == "" {
			return ""
		} else {
			why = append(why, miss)
		}
	}
	if len(why) == 0 {
		if external[q] {
			return ""
		}
		return fmt.Sprintf("`%s`: no package or type %s in the repo (a package from outside it? add it to the allowlist)", tok, q)
	}
	return fmt.Sprintf("`%s`: %s", tok, strings.Join(why, "; "))
}

// members checks a chain Type.Member[.Member…]: the first member must
// belong to Type; later ones (whose types the index does not know) must be
// a member of some type.
func (x *Index) members(chain []string) string {
	if len(chain) < 2 {
		return ""
	}
	if !x.Members[chain[0]][chain[1]] {
		return fmt.Sprintf("type %s has no method or field %s", chain[0], chain[1])
	}
	for _, m := range chain[2:] {
		if !x.Names[m] {
			return fmt.Sprintf("no method or field %s in the repo", m)
		}
	}
	return ""
}

// CheckMarkdown checks the code spans of Markdown file mdFile (slash path
// relative to the repo root): paths must exist (exists answers for a
// root-relative path; externalFiles are file names that are not repo files,
// e.g. a data set's manifest.json) and Go names must be declared (see
// ResolveName).
func CheckMarkdown(mdFile, content string, exists func(string) bool, x *Index, external, externalFiles map[string]bool) []Finding {
	var out []Finding
	for _, s := range CodeSpans(content) {
		if p, certain, ok := PathToken(s.Text); ok {
			if !externalFiles[path.Base(p)] && !ResolvePath(mdFile, p, certain, exists) {
				out = append(out, Finding{KindPath, mdFile, s.Line, fmt.Sprintf("`%s`: no such file or directory (from the repo root or %s/)", s.Text, path.Dir(mdFile))})
			}
			continue
		}
		if elems, call, ok := GoNameToken(s.Text); ok {
			if miss := x.ResolveName(elems, call, external); miss != "" {
				out = append(out, Finding{KindName, mdFile, s.Line, miss})
			}
		}
	}
	return out
}

// docPrefixes may precede the declared name in a doc comment.
var docPrefixes = []string{"A ", "An ", "The "}

var directive = regexp.MustCompile(`^//[a-z0-9]+:`)

// CheckDocComments checks that the doc comment of every top-level func,
// method and type in f starts with the declared name (optionally after
// "A ", "An " or "The "; a method may also be named Type.Method). Comment
// groups that open with a directive (//go:…) or "Deprecated" are skipped,
// and so are generated files. file is the slash path reported.
func CheckDocComments(fset *token.FileSet, file string, f *ast.File) []Finding {
	if ast.IsGenerated(f) {
		return nil
	}
	var out []Finding
	check := func(kind, name, recv string, doc *ast.CommentGroup) {
		if doc == nil || len(doc.List) == 0 {
			return
		}
		first := doc.List[0].Text
		if directive.MatchString(first) || strings.HasPrefix(strings.TrimSpace(strings.TrimLeft(first, "/*")), "Deprecated") {
			return
		}
		text := strings.TrimSpace(doc.Text())
		for _, p := range docPrefixes {
			if strings.HasPrefix(text, p) {
				text = text[len(p):]
				break
			}
		}
		word := leadingName(text)
		if word == name || (recv != "" && word == recv+"."+name) {
			return
		}
		shown := name
		if recv != "" {
			shown = recv + "." + name
		}
		out = append(out, Finding{KindDoc, file, fset.Position(doc.Pos()).Line,
			fmt.Sprintf("doc comment of %s %s starts with %q, not its name (a stale name? start it with %q)", kind, shown, word, name)})
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			recv, kind := "", "func"
			if d.Recv != nil && len(d.Recv.List) > 0 {
				recv, kind = recvType(d.Recv.List[0].Type), "method"
			}
			check(kind, d.Name.Name, recv, d.Doc)
		case *ast.GenDecl:
			if d.Tok != token.TYPE {
				continue
			}
			for _, s := range d.Specs {
				ts := s.(*ast.TypeSpec)
				doc := ts.Doc
				if doc == nil && !d.Lparen.IsValid() {
					doc = d.Doc
				}
				check("type", ts.Name.Name, "", doc)
			}
		}
	}
	return out
}

// leadingName is the identifier (or Type.Method) a text starts with.
func leadingName(s string) string {
	end := 0
	for i, r := range s {
		if r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || (r == '.' && i > 0 && i+1 < len(s) && isIdentStart(s[i+1])) {
			end = i + len(string(r))
			continue
		}
		break
	}
	return s[:end]
}

func isIdentStart(b byte) bool {
	return b == '_' || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
}
