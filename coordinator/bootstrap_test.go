package coordinator_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/natsembed"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/worker"
)

func loopback(t testing.TB) string { return fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)) }

// TestFixedPeers: three nodes given the same --peers list and NATS routes
// (the Helm StatefulSet way) bootstrap one cluster.
func TestFixedPeers(t *testing.T) {
	const token = "fixed-peers-token-0123"
	ids := []string{"c1", "c2", "c3"}
	raftAddrs, routeAddrs := map[string]string{}, map[string]string{}
	var peers, routes []string
	for _, id := range ids {
		raftAddrs[id], routeAddrs[id] = loopback(t), loopback(t)
		peers = append(peers, id+"="+raftAddrs[id])
		routes = append(routes, "nats-route://"+routeAddrs[id])
	}
	c := &cluster{t: t, nodes: map[string]*coordinator.Server{}, token: token}
	t.Cleanup(c.stopAll)
	for _, id := range ids {
		cfg := nodeConfig(t, id)
		cfg.RaftAddr, cfg.NATSClusterAddr = raftAddrs[id], routeAddrs[id]
		cfg.Peers, cfg.NATSRoutes, cfg.Token = peers, routes, token
		s, err := coordinator.New(cfg)
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		c.nodes[id] = s
	}
	c.waitFormed(3)
	w := startWorker(t, c.natsURLs(), token, "w1")
	testutil.WaitFor(t, 10*time.Second, "worker answered", func() bool { return w.Leader() != "" })
}

// TestExternalNATS: --nats-url replaces the embedded server.
func TestExternalNATS(t *testing.T) {
	ext, err := natsembed.Start(natsembed.Options{ServerName: "external", ClientAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Shutdown()
	cfg := nodeConfig(t, "c1")
	cfg.NATSURL = ext.ClientURL()
	s, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	if s.NATSURL() != ext.ClientURL() || s.NATSRoute() != "" {
		t.Fatalf("coordinator NATS = %s / %s, want the external %s and no routes", s.NATSURL(), s.NATSRoute(), ext.ClientURL())
	}
	// The external NATS speaks no TLS: the worker says so.
	w := startWorker(t, ext.ClientURL(), s.Token(), "w1", func(c *worker.Config) { c.PlaintextNATS = true })
	testutil.WaitFor(t, 10*time.Second, "worker registered through external NATS", func() bool {
		return workerStates(s)["w1"] == wire.WorkerIdle && w.Leader() == "c1"
	})
}

// TestNoBootstrapThenRaftJoin: a node started with --no-bootstrap waits
// until an operator adds it with `raft join`.
func TestNoBootstrapThenRaftJoin(t *testing.T) {
	c := startCluster(t, 1)
	s1 := c.nodes["c1"]
	cfg := nodeConfig(t, "c2")
	cfg.NoBootstrap, cfg.Token = true, c.token
	cfg.NATSRoutes = []string{s1.NATSRoute()}
	s2, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes["c2"] = s2
	if s2.Ready() == "" {
		t.Fatal("a node waiting to be added reports ready")
	}
	cl := c.client(c.token)
	req := &wire.RaftJoinRequest{ID: "c2", RaftAddr: s2.RaftAddr()}
	if _, err := wire.JoinRaft.Call(context.Background(), cl, req); err != nil {
		t.Fatalf("raft join: %v", err)
	}
	c.waitFormed(2)
}
