// Package datadir owns the files of a coordinator's data directory that
// other programs read too: the lock that keeps two coordinators off one
// raft log, the join token (workers and CLI calls on the same host find it
// there), and the saved NATS routes. It has no dependencies beyond the
// standard library, so lavit-worker can read a token without linking raft
// or the NATS server.
//
// Files in a data dir:
//
//	LOCK               flock held while a lavit-coord uses the dir
//	token              the join token (mode 0600)
//	token.next         the next admin token while a rotation is in progress (mode 0600)
//	nats-routes.json   the other coordinators' NATS route URLs, for restarts
//	raft/              raft-wal log and stable store, file snapshots (coordinator)
//	nats/              the embedded NATS server's store (coordinator)
package datadir

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Default is the data dir of `lavit-coord up` without --data-dir, and where
// clients on the same host look for the token.
const Default = "./lavit-data"

const (
	lockFileName   = "LOCK"
	tokenFileName  = "token"
	nextTokenName  = "token.next"
	routesFileName = "nats-routes.json"
)

// ErrInUse means another lavit-coord holds the data dir.
var ErrInUse = errors.New("data dir is in use")

// Lock is an exclusive hold on a data dir.
type Lock struct{ f *os.File }

// Acquire creates dir if needed and takes an exclusive lock on it, so two
// coordinators never share one raft log. The lock file records the pid.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %q: %w", dir, err)
	}
	// On every start, not only at creation: the dir holds the admin
	// token and the raft log, readable by this user alone.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %q: %w", dir, err)
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %q: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(owner))
			if pid == "" {
				pid = "unknown"
			}
			return nil, fmt.Errorf("%w: %q is locked by another lavit-coord (pid %s); stop it or pick another --data-dir", ErrInUse, dir, pid)
		}
		return nil, fmt.Errorf("lock data dir %q: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. It is safe on a nil Lock.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
	l.f = nil
}

// TokenPath is where a coordinator keeps its join token.
func TokenPath(dir string) string { return filepath.Join(dir, tokenFileName) }

// ReadToken reads the join token saved in a data dir.
func ReadToken(dir string) (string, error) {
	b, err := os.ReadFile(TokenPath(dir))
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %q is empty", TokenPath(dir))
	}
	return tok, nil
}

// ResolveToken settles a node's join token from the flag and the data dir:
// a saved token wins (a different --token is an error), else the flag's is
// saved, else, when mayGenerate, a random one is made and saved. generated
// is true when it made a new one (the CLI prints it once).
func ResolveToken(dir, flagToken string, mayGenerate bool) (token string, generated bool, err error) {
	saved, err := ReadToken(dir)
	switch {
	case err == nil:
		if flagToken != "" && flagToken != saved {
			return "", false, fmt.Errorf("--token differs from the token saved in %q; the saved one belongs to this node's cluster (remove the flag, or the file if you really mean to change it)", TokenPath(dir))
		}
		if err := os.Chmod(TokenPath(dir), 0o600); err != nil { // whoever created it
			return "", false, fmt.Errorf("join token: %w", err)
		}
		return saved, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", false, fmt.Errorf("read join token: %w", err)
	}
	token = flagToken
	if token == "" {
		if !mayGenerate {
			return "", false, errors.New("no join token: pass --token (or LAVIT_TOKEN)")
		}
		if token, err = NewToken(); err != nil {
			return "", false, err
		}
		generated = true
	}
	if err := os.WriteFile(TokenPath(dir), []byte(token+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("save join token: %w", err)
	}
	return token, generated, nil
}

// ReadRoutes returns the NATS route URLs saved in a data dir (none if the
// file does not exist).
func ReadRoutes(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, routesFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var routes []string
	if err := json.Unmarshal(b, &routes); err != nil {
		return nil, fmt.Errorf("parse %s: %w", routesFileName, err)
	}
	return routes, nil
}

// WriteRoutes saves the route list atomically (write, then rename).
func WriteRoutes(dir string, routes []string) error {
	routes = append([]string(nil), routes...)
	sort.Strings(routes)
	b, _ := json.MarshalIndent(routes, "", "  ")
	tmp := filepath.Join(dir, routesFileName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, routesFileName))
}

// NewToken makes a random admin token (48 hex digits).
func NewToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// WriteToken replaces the saved token (a finished rotation), atomically:
// a crash leaves the old token or the new one, never a torn file.
func WriteToken(dir, token string) error {
	return writeSecret(TokenPath(dir), token)
}

// ReadNextToken reads the next admin token a rotation in progress saved
// ("" when there is none).
func ReadNextToken(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, nextTokenName))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the next admin token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// WriteNextToken saves a rotation's next admin token, so that a node
// restarted before it learns that the rotation finished can still reach
// the coordinators that finished it.
func WriteNextToken(dir, token string) error {
	return writeSecret(filepath.Join(dir, nextTokenName), token)
}

// RemoveNextToken forgets the next admin token (the rotation finished
// or was abandoned).
func RemoveNextToken(dir string) error {
	err := os.Remove(filepath.Join(dir, nextTokenName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// writeSecret writes a one-line secret to path, mode 0600, atomically.
func writeSecret(path, secret string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".token-*")
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.WriteString(secret + "\n")
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}
