package natsembed

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/testutil"
)

// errorLog is a slog handler that counts error records (and keeps the
// last message, for failures).
type errorLog struct {
	mu     sync.Mutex
	errors int
	last   string
	// insecureWarnings counts the NATS server's warning that routes go
	// unverified, which they do not with VerifyConnection.
	insecureWarnings int
}

func (l *errorLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && strings.HasPrefix(r.Message, routeInsecureWarning) {
		l.mu.Lock()
		l.insecureWarnings++
		l.mu.Unlock()
	}
	if r.Level >= slog.LevelError {
		l.mu.Lock()
		l.errors++
		l.last = r.Message
		l.mu.Unlock()
	}
	return nil
}
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }

func (l *errorLog) count() (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errors, l.last
}

// routeTLS is the mutual TLS of a server with a certificate of the CA
// derived from token (as lavit's coordinators configure their routes).
func routeTLS(t *testing.T, name, token string) *tls.Config {
	t.Helper()
	ca, err := clusterca.Derive(token)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := clusterca.NewKeyring(name, ca)
	if err != nil {
		t.Fatal(err)
	}
	return keys.MutualTLS()
}

// TestRoutesNeedTheClusterCertificate: a server whose routes require
// mutual TLS with the cluster's CA (and no route password, as lavit's
// coordinators run) lets in a route from a server with a certificate of
// that CA, and no route from a server without TLS or with another CA's
// certificate: neither can join the NATS cluster to read or answer
// control messages.
func TestRoutesNeedTheClusterCertificate(t *testing.T) {
	const clusterToken = "the-cluster-admin-token-0123456789"
	seen := &errorLog{}
	a, err := Start(Options{ServerName: "a", ClientAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", StoreDir: t.TempDir(),
		RouteTLS: routeTLS(t, "a", clusterToken), Logger: slog.New(seen)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	seen.mu.Lock()
	if seen.insecureWarnings != 0 {
		t.Error("the server warned that routes go unverified; RouteTLS verifies them (VerifyConnection)")
	}
	seen.mu.Unlock()

	tests := []struct {
		name      string
		routeTLS  *tls.Config
		wantRoute bool
	}{
		{"no TLS", nil, false},
		{"another CA's certificate", routeTLS(t, "rogue", "another-cluster-token-0123456789"), false},
		{"the cluster CA's certificate", routeTLS(t, "b", clusterToken), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := seen.count()
			theirs := &errorLog{}
			b, err := Start(Options{ServerName: "b", ClientAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", StoreDir: t.TempDir(),
				Routes: []string{a.RouteURL()}, RouteTLS: tc.routeTLS, Logger: slog.New(theirs)})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				b.Shutdown()
				testutil.WaitFor(t, 10*time.Second, "the route down", func() bool { return a.NumRoutes() == 0 })
			}()
			if tc.wantRoute {
				testutil.WaitFor(t, 10*time.Second, "the route up", func() bool { return a.NumRoutes() > 0 && b.NumRoutes() > 0 })
				return
			}
			// Wait for the refusal (an error on either side), then check
			// that no route came up.
			testutil.WaitFor(t, 10*time.Second, "the route refused", func() bool {
				ours, _ := seen.count()
				other, _ := theirs.count()
				return ours > before || other > 0
			})
			if a.NumRoutes() != 0 || b.NumRoutes() != 0 {
				_, ours := seen.count()
				_, other := theirs.count()
				t.Fatalf("a route came up (ours: %q, theirs: %q)", ours, other)
			}
			_, ours := seen.count()
			_, other := theirs.count()
			t.Logf("refused: ours %q, theirs %q", ours, other)
		})
	}
}
