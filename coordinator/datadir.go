package coordinator

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
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

// Files in a coordinator's data dir:
//
//	LOCK               flock held while a lavit-coord uses the dir
//	token              the join token (mode 0600)
//	nats-routes.json   the other coordinators' NATS route URLs, for restarts
//	raft/              raft-wal log and stable store, file snapshots
//	nats/              the embedded NATS server's store
const (
	lockFileName   = "LOCK"
	tokenFileName  = "token"
	routesFileName = "nats-routes.json"
)

// ErrDataDirInUse means another lavit-coord holds the data dir.
var ErrDataDirInUse = errors.New("data dir is in use")

// lockDataDir creates dir if needed and takes an exclusive lock on it, so
// two coordinators never share one raft log.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %q: %w", dir, err)
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
			return nil, fmt.Errorf("%w: %q is locked by another lavit-coord (pid %s); stop it or pick another --data-dir", ErrDataDirInUse, dir, pid)
		}
		return nil, fmt.Errorf("lock data dir %q: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func unlockDataDir(f *os.File) {
	if f == nil {
		return
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}

// TokenPath is where a coordinator keeps its join token.
func TokenPath(dataDir string) string { return filepath.Join(dataDir, tokenFileName) }

// ReadToken reads the join token saved in a data dir.
func ReadToken(dataDir string) (string, error) {
	b, err := os.ReadFile(TokenPath(dataDir))
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %q is empty", TokenPath(dataDir))
	}
	return tok, nil
}

// resolveToken settles the node's join token from the flag and the data
// dir. It returns generated=true when it made a new one (to print once).
func resolveToken(dataDir, flagToken string, mayGenerate bool) (token string, generated bool, err error) {
	saved, err := ReadToken(dataDir)
	switch {
	case err == nil:
		if flagToken != "" && flagToken != saved {
			return "", false, fmt.Errorf("--token differs from the token saved in %q; the saved one belongs to this node's cluster (remove the flag, or the file if you really mean to change it)", TokenPath(dataDir))
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
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return "", false, fmt.Errorf("generate join token: %w", err)
		}
		token, generated = hex.EncodeToString(b), true
	}
	if err := os.WriteFile(TokenPath(dataDir), []byte(token+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("save join token: %w", err)
	}
	return token, generated, nil
}

// hashToken is what the FSM stores: the token itself never enters the log.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// tokenMatches compares a presented token against a stored hash in
// constant time.
func tokenMatches(presented, storedHash string) bool {
	if storedHash == "" || presented == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(hashToken(presented)), []byte(storedHash)) == 1
}

func readRoutesFile(dataDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, routesFileName))
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

// writeRoutesFile saves the route list atomically (write, then rename).
func writeRoutesFile(dataDir string, routes []string) error {
	sort.Strings(routes)
	b, _ := json.MarshalIndent(routes, "", "  ")
	tmp := filepath.Join(dataDir, routesFileName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dataDir, routesFileName))
}
