package coordinator

import (
	"bytes"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/lavit-org/lavit/internal/clusterca"
)

// TestRaftRefusesStrangers: raft's port speaks only mutual TLS with the
// cluster CA's certificates. AppendEntries (a higher term, an entry that
// would stop the node) and InstallSnapshot from a process without a
// certificate, or with one from another cluster's CA, fail at the
// handshake; the node stays up and leading, its term and log unchanged.
func TestRaftRefusesStrangers(t *testing.T) {
	s, _ := startOne(t)
	stats := func() (term, last string) {
		st := s.raft.Stats()
		return st["term"], st["last_log_index"]
	}
	term0, last0 := stats()
	term, _ := strconv.ParseUint(term0, 10, 64)
	last, _ := strconv.ParseUint(last0, 10, 64)
	target := raft.ServerAddress(s.RaftAddr())
	evil := []*raft.Log{{Index: last + 1, Term: term + 100, Type: raft.LogCommand, Data: []byte{0x7f, 1}}} // an unknown command: it would stop the node

	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 5*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	otherCA, err := clusterca.Derive("another cluster's admin token")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := otherCA.Issue("intruder")
	if err != nil {
		t.Fatal(err)
	}
	stream, err := newTLSStreamLayer("127.0.0.1:0", nil, otherCA.MutualTLS(leaf))
	if err != nil {
		t.Fatal(err)
	}
	foreign := raft.NewNetworkTransport(stream, 1, 5*time.Second, io.Discard)
	defer foreign.Close()

	for name, trans := range map[string]*raft.NetworkTransport{"no certificate": plain, "another cluster's certificate": foreign} {
		var ae raft.AppendEntriesResponse
		err := trans.AppendEntries("c1", target, &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ID: []byte("intruder"), Addr: []byte(trans.LocalAddr())},
			Term:      term + 100, PrevLogEntry: last, PrevLogTerm: term, Entries: evil, LeaderCommitIndex: last + 1,
		}, &ae)
		if err == nil {
			t.Errorf("%s: AppendEntries answered (%+v)", name, ae)
		}
		var is raft.InstallSnapshotResponse
		snap := []byte(`{"format":4,"last_index":1,"state":{"cluster_id":"evil","token_hash":"00"}}`)
		err = trans.InstallSnapshot("c1", target, &raft.InstallSnapshotRequest{
			RPCHeader:       raft.RPCHeader{ID: []byte("intruder"), Addr: []byte(trans.LocalAddr())},
			SnapshotVersion: raft.SnapshotVersionMax,
			Term:            term + 100, LastLogIndex: last + 10, LastLogTerm: term + 100, Size: int64(len(snap)),
		}, &is, bytes.NewReader(snap))
		if err == nil {
			t.Errorf("%s: InstallSnapshot answered (%+v)", name, is)
		}
	}
	if term1, last1 := stats(); term1 != term0 || last1 != last0 {
		t.Errorf("term/log %s/%s became %s/%s", term0, last0, term1, last1)
	}
	if r := s.Ready(); r != "" || !s.IsLeader() {
		t.Errorf("after the attempts: ready %q, leader %v", r, s.IsLeader())
	}
	var cluster string
	s.fsm.Read(func(st *State, _ uint64) { cluster = st.ClusterID })
	if cluster == "evil" {
		t.Error("a stranger's snapshot replaced the state")
	}
}
