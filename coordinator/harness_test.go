package coordinator_test

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/worker"
)

// testLogger logs to stderr when LAVIT_TEST_LOG is set, else nowhere.
func testLogger() *slog.Logger {
	if os.Getenv("LAVIT_TEST_LOG") != "" {
		l, _ := logging.New(os.Stderr, logging.Options{Level: os.Getenv("LAVIT_TEST_LOG")})
		return l
	}
	return logging.Discard()
}

// nodeConfig is a coordinator on random loopback ports with production
// timings (the tests check the defaults, not faster ones).
func nodeConfig(t testing.TB, id string) coordinator.Config {
	c := coordinator.DefaultConfig()
	c.FileRoots = append(c.FileRoots, os.TempDir()) // the tests' data and checkpoints
	c.NodeID = id
	c.DataDir = t.TempDir()
	c.RaftAddr = "127.0.0.1:0"
	c.HTTPAddr = "127.0.0.1:0"
	c.NATSAddr = "127.0.0.1:0"
	c.NATSClusterAddr = "127.0.0.1:0"
	c.Logger = testLogger().With("test_node", id)
	return c
}

type cluster struct {
	t     testing.TB
	nodes map[string]*coordinator.Server
	token string
}

// startCluster starts n coordinators: the first bootstraps, the others
// join it over HTTP, as `lavit-coord up --join` does.
func startCluster(t testing.TB, n int) *cluster {
	return startClusterWith(t, n, nil)
}

// startClusterWith is startCluster with each node's configuration
// adjusted by adjust (nil: as is) before it starts.
func startClusterWith(t testing.TB, n int, adjust func(*coordinator.Config)) *cluster {
	t.Helper()
	if adjust == nil {
		adjust = func(*coordinator.Config) {}
	}
	c := &cluster{t: t, nodes: map[string]*coordinator.Server{}}
	first := nodeConfig(t, "c1")
	adjust(&first)
	s1, err := coordinator.New(first)
	if err != nil {
		t.Fatalf("start c1: %v", err)
	}
	c.nodes["c1"] = s1
	c.token = s1.Token()
	t.Cleanup(c.stopAll)
	testutil.WaitFor(t, 30*time.Second, "c1 ready", func() bool { return s1.Ready() == "" })
	for i := 2; i <= n; i++ {
		id := "c" + string(rune('0'+i))
		cfg := nodeConfig(t, id)
		cfg.Join = s1.HTTPAddr()
		cfg.Token = c.token
		adjust(&cfg)
		s, err := coordinator.New(cfg)
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		c.nodes[id] = s
	}
	c.waitFormed(n)
	return c
}

// waitFormed waits until every node agrees on a leader and sees n
// announced coordinators, and the NATS servers are fully routed.
func (c *cluster) waitFormed(n int) {
	c.t.Helper()
	testutil.WaitFor(c.t, 60*time.Second, "cluster formed", func() bool {
		leader := ""
		for _, s := range c.nodes {
			if s.Ready() != "" {
				return false
			}
			st, err := s.Status()
			if err != nil || len(st.Coordinators) != n {
				return false
			}
			for _, co := range st.Coordinators {
				if !co.Registered || co.NATSRoute == "" {
					return false
				}
			}
			if leader != "" && st.Leader != leader {
				return false
			}
			leader = st.Leader
		}
		return true
	})
}

func (c *cluster) leader() *coordinator.Server {
	c.t.Helper()
	var l *coordinator.Server
	testutil.WaitFor(c.t, 30*time.Second, "a leader", func() bool {
		for _, s := range c.nodes {
			if s.IsLeader() {
				l = s
				return true
			}
		}
		return false
	})
	return l
}

func (c *cluster) natsURLs() string {
	var urls []string
	for _, s := range c.nodes {
		urls = append(urls, s.NATSURL())
	}
	return strings.Join(urls, ",")
}

func (c *cluster) stopAll() {
	var wg sync.WaitGroup
	for _, s := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); s.Kill() }()
	}
	wg.Wait()
}

// client connects a control client to the cluster's NATS.
func (c *cluster) client(token string) *wire.Client {
	c.t.Helper()
	nc, err := nats.Connect(c.natsURLs(), wire.ConnectOptions(c.token)...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	return &wire.Client{NC: nc, Token: token, From: "test"}
}

type runningAgent struct {
	*worker.Agent
	cancel context.CancelFunc
	done   chan error
}

// startWorker runs a real worker agent against the cluster; opts adjust
// its configuration.
func startWorker(t testing.TB, coord, token, id string, opts ...func(*worker.Config)) *runningAgent {
	t.Helper()
	cfg := worker.DefaultConfig()
	cfg.Coord, cfg.Token, cfg.ID = coord, token, id
	cfg.Host, cfg.Device, cfg.Devices = "host-"+id, "cpu", worker.DetectDevices()
	cfg.Logger = testLogger().With("test_worker", id)
	for _, o := range opts {
		o(&cfg)
	}
	a, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ra.done <- a.Run(ctx) }()
	t.Cleanup(func() { ra.stop(t) })
	return ra
}

// stop cancels the agent (it deregisters) and returns Run's error.
func (r *runningAgent) stop(t testing.TB) error {
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // keep it for a second stop
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("worker agent did not stop within 10s")
		return nil
	}
}

func workerStates(s *coordinator.Server) map[string]string {
	out := map[string]string{}
	for _, w := range s.Workers() {
		out[w.ID] = w.State
	}
	return out
}
