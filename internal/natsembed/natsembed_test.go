package natsembed

import (
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
