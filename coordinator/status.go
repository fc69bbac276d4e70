package coordinator

import (
	"sort"

	"github.com/hashicorp/raft"

	"github.com/lavit-org/lavit/internal/wire"
)

// Reads. Everything here reads this node's FSM, so its consistency level
// is "what this node has applied". Served by the leader over NATS (after
// its Barrier) that is every committed entry; served by a follower over
// HTTP /v1/status it may lag by a heartbeat.

func recordToWire(c CoordinatorRecord) wire.Coordinator {
	return wire.Coordinator{ID: c.ID, RaftAddr: c.RaftAddr, HTTPAddr: c.HTTPAddr, NATSURL: c.NATSURL, NATSRoute: c.NATSRoute}
}

func (s *Server) workerToWire(w WorkerRecord) wire.Worker {
	out := wire.Worker{
		ID: w.ID, Host: w.Host, Device: w.Device, Devices: w.Devices, Capacity: w.Capacity,
		State: w.State, Since: w.Since, Registered: w.Registered, Run: w.Run,
		Instance: w.Instance, Build: w.Build,
	}
	if s.IsLeader() {
		if t, ok := s.live.last(w.ID); ok {
			out.LastHeartbeat = t.UTC()
		}
	}
	return out
}

// Workers lists the registry, sorted by id.
func (s *Server) Workers() []wire.Worker {
	var recs []WorkerRecord
	s.fsm.Read(func(st *State, _ uint64) {
		for _, w := range st.sortedWorkers() {
			recs = append(recs, *w)
		}
	})
	out := make([]wire.Worker, 0, len(recs))
	for _, w := range recs {
		out = append(out, s.workerToWire(w))
	}
	return out
}

// peers lists the raft configuration joined with the coordinator records.
func (s *Server) peers() ([]wire.Coordinator, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	_, leaderID := s.raft.LeaderWithID()
	recs := map[string]CoordinatorRecord{}
	s.fsm.Read(func(st *State, _ uint64) {
		for id, c := range st.Coordinators {
			recs[id] = *c
		}
	})
	var out []wire.Coordinator
	for _, srv := range f.Configuration().Servers {
		c := wire.Coordinator{ID: string(srv.ID), RaftAddr: string(srv.Address)}
		if rec, ok := recs[c.ID]; ok {
			c = recordToWire(rec)
			c.RaftAddr = string(srv.Address)
			c.Registered = true
		}
		c.Suffrage = srv.Suffrage.String()
		c.Leader = srv.ID == leaderID
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Status reports the cluster as this node sees it.
func (s *Server) Status() (wire.Status, error) {
	peers, err := s.peers()
	if err != nil {
		return wire.Status{}, err
	}
	addr, id := s.raft.LeaderWithID()
	st := wire.Status{
		Leader: string(id), LeaderAddr: string(addr),
		Term: s.raft.CurrentTerm(), CommitIndex: s.raft.CommitIndex(), AppliedIndex: s.raft.AppliedIndex(),
		Coordinators: peers, Build: s.cfg.Build,
	}
	s.fsm.Read(func(fs *State, _ uint64) {
		st.ClusterID = fs.ClusterID
		st.Runs = len(fs.Runs)
		if fs.AdminRotation != nil {
			st.AdminRotationSince = fs.AdminRotation.Started
		}
		for _, w := range fs.Workers {
			st.Workers.Total++
			switch w.State {
			case wire.WorkerIdle:
				st.Workers.Idle++
			case wire.WorkerTraining:
				st.Workers.Training++
			case wire.WorkerLost:
				st.Workers.Lost++
			}
		}
	})
	return st, nil
}

// RaftState is this node's raft role (Leader, Follower, Candidate, Shutdown).
func (s *Server) RaftState() raft.RaftState { return s.raft.State() }
