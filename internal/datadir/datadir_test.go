package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestLockIsExclusive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Acquire: %v, want ErrInUse", err)
	} else if !strings.Contains(err.Error(), "pid") {
		t.Errorf("the error should name the holder's pid: %v", err)
	}
	l.Release()
	l.Release() // twice is harmless
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	l2.Release()
}

func TestResolveToken(t *testing.T) {
	tests := []struct {
		name        string
		saved       string // "" = no token file
		flag        string
		mayGenerate bool
		want        string // "*" = any generated token
		wantErr     string
	}{
		{name: "saved wins", saved: "abc", want: "abc"},
		{name: "saved equals flag", saved: "abc", flag: "abc", want: "abc"},
		{name: "flag differs from saved", saved: "abc", flag: "xyz", wantErr: "differs"},
		{name: "flag saved", flag: "xyz", want: "xyz"},
		{name: "generated", mayGenerate: true, want: "*"},
		{name: "nothing and may not generate", wantErr: "no join token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.saved != "" {
				os.WriteFile(TokenPath(dir), []byte(tt.saved+"\n"), 0o600)
			}
			got, generated, err := ResolveToken(dir, tt.flag, tt.mayGenerate)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "*" {
				if !generated || len(got) != 48 {
					t.Fatalf("token %q generated=%v, want a fresh 48-hex-digit token", got, generated)
				}
			} else if got != tt.want || generated {
				t.Fatalf("token %q generated=%v, want %q", got, generated, tt.want)
			}
			saved, err := ReadToken(dir)
			if err != nil || saved != got {
				t.Fatalf("saved token %q (%v), want %q", saved, err, got)
			}
			if st, _ := os.Stat(TokenPath(dir)); st.Mode().Perm() != 0o600 {
				t.Errorf("token file mode %v, want 0600", st.Mode().Perm())
			}
		})
	}
}

func TestReadTokenEmptyFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(TokenPath(dir), []byte("\n"), 0o600)
	if _, err := ReadToken(dir); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty token file: %v", err)
	}
}

func TestRoutesRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if r, err := ReadRoutes(dir); err != nil || r != nil {
		t.Fatalf("no file: %v %v", r, err)
	}
	in := []string{"nats-route://b:6222", "nats-route://a:6222"}
	if err := WriteRoutes(dir, in); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRoutes(dir)
	if err != nil || !slices.Equal(got, []string{"nats-route://a:6222", "nats-route://b:6222"}) {
		t.Fatalf("routes %v (%v)", got, err)
	}
	if in[0] != "nats-route://b:6222" {
		t.Error("WriteRoutes reordered the caller's slice")
	}
	os.WriteFile(filepath.Join(dir, routesFileName), []byte("{"), 0o600)
	if _, err := ReadRoutes(dir); err == nil || !strings.Contains(err.Error(), routesFileName) {
		t.Fatalf("corrupt routes file: %v", err)
	}
}
