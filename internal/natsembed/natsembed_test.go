package natsembed

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/testutil"
)

// TestTwoServersRoute: two embedded servers joined by a route carry a
// request from a client of one to a subscriber on the other.
func TestTwoServersRoute(t *testing.T) {
	a, err := Start(Options{ServerName: "a", ClientAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	b, err := Start(Options{ServerName: "b", ClientAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", StoreDir: t.TempDir(), Routes: []string{a.RouteURL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	testutil.WaitFor(t, 10*time.Second, "route up", func() bool { return a.NumRoutes() > 0 && b.NumRoutes() > 0 })

	na, err := nats.Connect(a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	nb, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	if _, err := na.Subscribe("ping", func(m *nats.Msg) { m.Respond([]byte("pong")) }); err != nil {
		t.Fatal(err)
	}
	na.Flush()
	var reply *nats.Msg
	testutil.WaitFor(t, 5*time.Second, "reply across the route", func() bool {
		reply, err = nb.Request("ping", nil, 200*time.Millisecond)
		return err == nil
	})
	if string(reply.Data) != "pong" {
		t.Fatalf("reply %q, want pong", reply.Data)
	}
}

func TestStartErrors(t *testing.T) {
	for name, opts := range map[string]Options{
		"bad client addr":     {ClientAddr: "nohost"},
		"routes without addr": {ClientAddr: "127.0.0.1:0", Routes: []string{"nats-route://127.0.0.1:1"}},
		"bad route url":       {ClientAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", Routes: []string{"::nope"}},
		"port out of range":   {ClientAddr: "127.0.0.1:70000"},
		"bad cluster addr":    {ClientAddr: "127.0.0.1:0", ClusterAddr: "x"},
	} {
		opts.StoreDir = t.TempDir()
		if s, err := Start(opts); err == nil {
			s.Shutdown()
			t.Errorf("%s: started", name)
		}
	}
}

// TestAuthenticateRecheckPrune: the Authenticator decides who connects;
// Prune forgets closed connections; Recheck closes the connections whose
// credentials it now refuses and keeps the rest.
func TestAuthenticateRecheckPrune(t *testing.T) {
	var mu sync.Mutex
	valid := map[string]bool{"token-a": true, "token-b": true}
	s, err := Start(Options{ServerName: "a", ClientAddr: "127.0.0.1:0", StoreDir: t.TempDir(),
		Authenticate: func(c Credentials) (Grant, error) {
			mu.Lock()
			defer mu.Unlock()
			if !valid[c.Token] {
				return Grant{}, errors.New("refused")
			}
			return Grant{Name: c.Token, Publish: []string{"x"}, Subscribe: []string{"y"}}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if c, err := nats.Connect(s.ClientURL(), nats.Token("token-z"), nats.MaxReconnects(0)); !errors.Is(err, nats.ErrAuthorization) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("an unknown token: %v, want refused", err)
	}
	closedA := make(chan struct{})
	a, err := nats.Connect(s.ClientURL(), nats.Token("token-a"), nats.MaxReconnects(0), nats.ClosedHandler(func(*nats.Conn) { close(closedA) }))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := nats.Connect(s.ClientURL(), nats.Token("token-b"), nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	testutil.WaitFor(t, 10*time.Second, "the closed connection forgotten", func() bool { return len(s.Prune()) == 1 })

	mu.Lock()
	delete(valid, "token-a")
	mu.Unlock()
	if n := s.Recheck(); n != 1 {
		t.Fatalf("Recheck closed %d connections, want 1", n)
	}
	select {
	case <-closedA:
	case <-time.After(10 * time.Second):
		t.Fatal("the refused connection is still open")
	}
	if n := len(s.Prune()); n != 0 {
		t.Fatalf("%d connections remembered after all closed", n)
	}
}
