package coordinator

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/testutil"
	"github.com/lavit-org/lavit/internal/wire"
)

// startOne starts a one-node coordinator on loopback and returns it with a
// NATS connection to it.
func startOne(t *testing.T) (*Server, *nats.Conn) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.FileRoots = append(cfg.FileRoots, os.TempDir())
	cfg.NodeID, cfg.DataDir = "c1", t.TempDir()
	cfg.RaftAddr, cfg.HTTPAddr, cfg.NATSAddr, cfg.NATSClusterAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = logging.Discard()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	testutil.WaitFor(t, 10*time.Second, "leader ready", func() bool { return s.Ready() == "" })
	nc, err := nats.Connect(s.NATSURL(), wire.ConnectOptions(s.Token())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return s, nc
}

// TestRendezvous: the members of a run's generation post their ring
// addresses and all get the full list by rank once the last one has
// posted; after a new generation, a member of the old one is refused.
func TestRendezvous(t *testing.T) {
	s, nc := startOne(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for _, id := range []string{"w1", "w2", "w3"} {
		must(t, s.raftApply(CmdRegisterWorker, RegisterWorkerCmd{Worker: WorkerRecord{ID: id, Instance: "i-" + id, Host: "h", Device: "cpu", Capacity: 1, Since: now}}))
		s.live.seen(id, time.Now())
	}
	// min_workers 99: the scheduler never starts it; the test does.
	must(t, s.raftApply(CmdCreateRun, CreateRunCmd{ID: "r1", Spec: []byte(`{}`), Policy: RunPolicy{Stage: 1, MinWorkers: 99, MaxWorkers: 99, Backend: wire.BackendRing}, At: now}))
	must(t, s.raftApply(CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 1, Members: map[string]int{"w1": 0, "w2": 1, "w3": 2}, At: now}))

	post := func(id string, gen uint64, rank int, addr string, ncclID []byte) (wire.RendezvousReply, error) {
		c := &wire.Client{NC: nc, Token: s.Token(), From: id}
		reply, err := wire.Rendezvous.Call(ctx, c, &wire.RendezvousRequest{Instance: "i-" + id, Run: "r1", Generation: gen, Rank: rank, Addr: addr, NCCLID: ncclID})
		if err != nil {
			return wire.RendezvousReply{}, err
		}
		return *reply, nil
	}
	desired := func(id string) wire.DesiredState {
		w, _ := s.lookupWorker(id)
		return s.desiredState(w)
	}

	if d := desired("w2"); d.State != wire.WorkerTraining || d.Run != "r1" || d.Generation != 1 || d.Rank != 1 || d.World != 3 || d.Backend != wire.BackendRing {
		t.Fatalf("w2 desired state %+v, want TRAINING r1 gen 1 rank 1 of 3 on ring", d)
	}
	r, err := post("w3", 1, 2, "127.0.0.1:9003", nil)
	if err != nil || r.Complete || r.Posted != 1 {
		t.Fatalf("first post: %+v %v, want incomplete with 1 posted", r, err)
	}
	if r, err = post("w1", 1, 0, "127.0.0.1:9001", nil); err != nil || r.Complete {
		t.Fatalf("second post: %+v %v", r, err)
	}
	r, err = post("w2", 1, 1, "127.0.0.1:9002", nil)
	want := []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}
	if err != nil || !r.Complete || len(r.Peers) != 3 || r.Peers[0] != want[0] || r.Peers[1] != want[1] || r.Peers[2] != want[2] {
		t.Fatalf("last post: %+v %v, want complete with %v", r, err, want)
	}
	// The generation's ring secret comes with the complete list, to its
	// members only, and never before the list is complete.
	gen1Secret := r.RingSecret
	if len(gen1Secret) != ringSecretBytes {
		t.Fatalf("ring secret of %d bytes, want %d", len(gen1Secret), ringSecretBytes)
	}
	// Repeats are idempotent and see the same list and secret.
	if r, err = post("w1", 1, 0, "127.0.0.1:9001", nil); err != nil || !r.Complete || r.Peers[2] != want[2] || !bytes.Equal(r.RingSecret, gen1Secret) {
		t.Fatalf("repeat: %+v %v", r, err)
	}

	// Refusals, each with a stable code and a message naming the problem.
	refusals := []struct {
		name     string
		id       string
		gen      uint64
		rank     int
		addr     string
		ncclID   []byte
		wantCode string
		wantText string
	}{
		{"wrong rank", "w1", 1, 2, "127.0.0.1:1", nil, wire.CodeConflict, "has rank 0"},
		{"future generation", "w1", 2, 0, "127.0.0.1:1", nil, wire.CodeStale, "stale generation 2"},
		{"bad address", "w1", 1, 0, "no-port", nil, wire.CodeBadRequest, "not host:port"},
		{"short nccl id", "w1", 1, 0, "", []byte{1, 2, 3}, wire.CodeBadRequest, "nccl_id is 3 bytes"},
		{"nccl id from rank 1", "w2", 1, 1, "", make([]byte, 128), wire.CodeBadRequest, "only rank 0"},
	}
	for _, tc := range refusals {
		_, err := post(tc.id, tc.gen, tc.rank, tc.addr, tc.ncclID)
		if !wire.HasCode(err, tc.wantCode) || !bytes.Contains([]byte(err.Error()), []byte(tc.wantText)) {
			t.Errorf("%s: got %v, want code %s mentioning %q", tc.name, err, tc.wantCode, tc.wantText)
		}
	}

	// Generation 2 drops w3. Its old-generation post is refused as stale,
	// and it is told to be idle; the others start a fresh rendezvous.
	must(t, s.raftApply(CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 2, Members: map[string]int{"w2": 0, "w1": 1}, At: now}))
	if _, err := post("w3", 1, 2, "127.0.0.1:9003", nil); !wire.HasCode(err, wire.CodeStale) || !bytes.Contains([]byte(err.Error()), []byte("stale generation 1")) {
		t.Errorf("old-generation post: got %v, want a stale-generation refusal", err)
	}
	if _, err := post("w3", 2, 2, "127.0.0.1:9003", nil); !wire.HasCode(err, wire.CodeStale) || !bytes.Contains([]byte(err.Error()), []byte("not a member")) {
		t.Errorf("non-member post: got %v, want a not-a-member refusal", err)
	}
	if d := desired("w3"); d.State != wire.WorkerIdle {
		t.Errorf("w3 desired state %+v, want IDLE", d)
	}
	if r, err := post("w1", 2, 1, "127.0.0.1:9011", nil); err != nil || r.Complete || r.Posted != 1 || r.RingSecret != nil {
		t.Fatalf("generation 2 first post: %+v %v, want a fresh, incomplete rendezvous without a secret", r, err)
	}
	r, err = post("w2", 2, 0, "127.0.0.1:9012", nil)
	if err != nil || !r.Complete || r.Peers[0] != "127.0.0.1:9012" || r.Peers[1] != "127.0.0.1:9011" {
		t.Fatalf("generation 2 complete: %+v %v", r, err)
	}
	if len(r.RingSecret) != ringSecretBytes || bytes.Equal(r.RingSecret, gen1Secret) {
		t.Errorf("generation 2's ring secret %x: want a fresh one (generation 1's was %x)", r.RingSecret, gen1Secret)
	}

	// A generation that skips a number, or names an unknown worker, is
	// refused by the state machine itself.
	if err := s.raftApply(CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 4, Members: map[string]int{"w1": 0}, At: now}); err == nil {
		t.Error("generation 4 after 2 was accepted")
	}
	if err := s.raftApply(CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 3, Members: map[string]int{"w1": 0, "nobody": 1}, At: now}); err == nil {
		t.Error("a generation with an unknown worker was accepted")
	}
	if err := s.raftApply(CmdStartGeneration, StartGenerationCmd{Run: "r1", Generation: 3, Members: map[string]int{"w1": 0, "w2": 0}, At: now}); err == nil {
		t.Error("a generation with a duplicate rank was accepted")
	}
}

// TestRendezvousNCCLID: rank 0's NCCL unique id reaches every member.
func TestRendezvousNCCLID(t *testing.T) {
	s, nc := startOne(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for _, id := range []string{"g0", "g1"} {
		must(t, s.raftApply(CmdRegisterWorker, RegisterWorkerCmd{Worker: WorkerRecord{ID: id, Instance: "i-" + id, Host: "h", Device: "cuda:0", Capacity: 1, Since: now}}))
	}
	must(t, s.raftApply(CmdCreateRun, CreateRunCmd{ID: "r2", Spec: []byte(`{"collective":{"backend":"nccl"}}`), Policy: RunPolicy{Stage: 1, MinWorkers: 99, MaxWorkers: 99, Backend: wire.BackendNCCL}, At: now}))
	must(t, s.raftApply(CmdStartGeneration, StartGenerationCmd{Run: "r2", Generation: 1, Members: map[string]int{"g0": 0, "g1": 1}, At: now}))
	id := bytes.Repeat([]byte{0xAB}, 128)
	call := func(from string, rank int, ncclID []byte) wire.RendezvousReply {
		c := &wire.Client{NC: nc, Token: s.Token(), From: from}
		reply, err := wire.Rendezvous.Call(ctx, c, &wire.RendezvousRequest{Instance: "i-" + from, Run: "r2", Generation: 1, Rank: rank, NCCLID: ncclID})
		if err != nil {
			t.Fatal(err)
		}
		return *reply
	}
	if r := call("g1", 1, nil); r.Complete {
		t.Fatal("complete before rank 0 posted")
	}
	r := call("g0", 0, id)
	if !r.Complete || !bytes.Equal(r.NCCLID, id) || r.Peers != nil {
		t.Fatalf("got %+v, want complete with the id and no ring peers", r)
	}
	w, _ := s.lookupWorker("g1")
	if d := s.desiredState(w); d.Backend != wire.BackendNCCL {
		t.Errorf("backend %q, want nccl", d.Backend)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
