package coordinator_test

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// BenchmarkHeartbeat measures heartbeats one leader answers per second:
// 64 registered workers, 32 concurrent callers over 8 NATS connections,
// with TLS (the default) and without (--plaintext-nats), to show what
// TLS costs. Client and server share this machine's cores, so this is a
// lower bound.
func BenchmarkHeartbeat(b *testing.B) {
	for _, plaintext := range []bool{false, true} {
		name := map[bool]string{false: "tls", true: "plaintext"}[plaintext]
		b.Run(name, func(b *testing.B) { benchmarkHeartbeat(b, plaintext) })
	}
}

func benchmarkHeartbeat(b *testing.B, plaintext bool) {
	cfg := nodeConfig(b, "c1")
	cfg.PlaintextNATS = plaintext
	s, err := coordinator.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Kill()
	testutil.WaitFor(b, 30*time.Second, "c1 ready", func() bool { return s.Ready() == "" })
	connect := wire.ConnectOptions
	if plaintext {
		connect = wire.PlaintextConnectOptions
	}
	const workers, conns = 64, 8
	clients := make([]*wire.Client, conns)
	for i := range clients {
		nc, err := nats.Connect(s.NATSURL(), connect(s.Token())...)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		clients[i] = &wire.Client{NC: nc, Token: s.Token()}
	}
	for i := 0; i < workers; i++ {
		cl := *clients[i%conns]
		cl.From = fmt.Sprintf("w%d", i)
		reg := &wire.RegisterRequest{Instance: "i", Host: "h", Device: "cpu", Capacity: 1}
		if _, err := wire.Register.Call(context.Background(), &cl, reg); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		n := next.Add(1)
		cl := *clients[n%conns]
		cl.From = fmt.Sprintf("w%d", n%workers)
		hb := &wire.HeartbeatRequest{Instance: "i", State: wire.WorkerIdle}
		for pb.Next() {
			if _, err := wire.Heartbeat.Call(context.Background(), &cl, hb); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

// BenchmarkRegister measures registrations per second: each one is a raft
// write (fsync'd by raft-wal) on a one-node cluster.
func BenchmarkRegister(b *testing.B) {
	c := startCluster(b, 1)
	cl := c.client(c.token)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		cl.From = fmt.Sprintf("w%d", i)
		reg := &wire.RegisterRequest{Instance: "i", Host: "h", Device: "cpu", Capacity: 1}
		if _, err := wire.Register.Call(context.Background(), cl, reg); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

// BenchmarkFailover measures leader failover as the workers see it: kill
// the leader of a 3-node cluster (default raft timings), then time until
// every worker's heartbeat is answered by the new leader. One try per
// iteration; run with -benchtime=10x for the 10 tries the report uses.
func BenchmarkFailover(b *testing.B) {
	var took []time.Duration
	for i := 0; i < b.N; i++ {
		took = append(took, failoverOnce(b))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "median_ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max_ms")
	b.ReportMetric(float64(took[0].Milliseconds()), "min_ms")
}

func failoverOnce(b *testing.B) time.Duration {
	b.StopTimer()
	c := startCluster(b, 3)
	defer c.stopAll()
	ws := []*runningAgent{startWorker(b, c.natsURLs(), c.token, "w1"), startWorker(b, c.natsURLs(), c.token, "w2")}
	defer func() {
		for _, w := range ws {
			w.stop(b)
		}
	}()
	old := c.leader()
	testutil.WaitFor(b, 10*time.Second, "workers registered", func() bool {
		return len(workerStates(old)) == 2 && ws[0].Leader() == old.ID() && ws[1].Leader() == old.ID()
	})
	b.StartTimer()
	killed := time.Now()
	old.Kill()
	delete(c.nodes, old.ID())
	for _, w := range ws {
		testutil.WaitFor(b, 30*time.Second, "new leader answers", func() bool {
			return w.Leader() != old.ID() && w.LastReply().After(killed)
		})
	}
	took := time.Since(killed)
	b.StopTimer()
	for id, st := range workerStates(c.leader()) {
		if st != wire.WorkerIdle {
			b.Errorf("worker %s %s after failover", id, st)
		}
	}
	return took
}
