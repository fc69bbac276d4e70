package coordinator

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/wire"
)

// The control service: request/reply handlers on the wire subjects,
// subscribed only while this node leads (see leaderLoop). Each subject has
// its own subscription, so a slow raft write for a registration never
// delays heartbeats, which are answered from memory.

// route is one served subject and its handler.
type route struct {
	subject string
	handler nats.MsgHandler
}

// routes pairs every control endpoint with its handler.
func (s *Server) routes() []route {
	return []route{
		serve(s, wire.Register, s.handleRegister),
		serve(s, wire.Heartbeat, s.handleHeartbeat),
		serve(s, wire.Deregister, s.handleDeregister),
		serve(s, wire.Rendezvous, s.handleRendezvous),
		serve(s, wire.ReportProgress, s.handleProgress),
		serve(s, wire.FinishRun, s.handleRunFinish),
		serve(s, wire.ReportCheckpointPart, s.handleCkptPart),
		serve(s, wire.GetStatus, s.handleStatus),
		serve(s, wire.SubmitRun, s.handleRunSubmit),
		serve(s, wire.ListRuns, s.handleRunList),
		serve(s, wire.ShowRun, s.handleRunShow),
		serve(s, wire.CancelRun, s.handleRunCancel),
		serve(s, wire.ResumeRun, s.handleRunResume),
		serve(s, wire.RequestCheckpoint, s.handleRunCheckpoint),
		serve(s, wire.ListCheckpoints, s.handleCkptList),
		serve(s, wire.ListWorkers, s.handleWorkers),
		serve(s, wire.ListRaftPeers, s.handleRaftPeers),
		serve(s, wire.JoinRaft, s.handleRaftJoin),
		serve(s, wire.RemoveRaftPeer, s.handleRaftRemove),
		serve(s, wire.TransferLeadership, s.handleRaftTransfer),
		serve(s, wire.Announce, s.handleAnnounce),
		serve(s, wire.CreateToken, s.handleTokenCreate),
		serve(s, wire.ListTokens, s.handleTokenList),
		serve(s, wire.RevokeToken, s.handleTokenRevoke),
		serve(s, wire.RotateToken, s.handleTokenRotate),
	}
}

// subscribeControl subscribes every control subject in the leader queue
// group and flushes, so the server knows the interest before we return.
func (s *Server) subscribeControl() ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	for _, r := range s.routes() {
		sub, err := s.nc.QueueSubscribe(r.subject, wire.LeaderQueue, r.handler)
		if err != nil {
			return subs, fmt.Errorf("subscribe %s: %w", r.subject, err)
		}
		subs = append(subs, sub)
	}
	if err := s.nc.Flush(); err != nil {
		return subs, fmt.Errorf("flush subscriptions: %w", err)
	}
	return subs, nil
}

// authed is implemented by every request through its embedded wire.Auth.
type authed interface{ GetAuth() wire.Auth }

// serve wraps a typed handler for an endpoint: decode with bounds, check
// the token, call fn, encode the reply. A bad message gets an error reply
// and nothing else happens; the service keeps running.
func serve[Req, Rep any](s *Server, ep wire.Endpoint[Req, Rep], fn func(*Req) (*Rep, *wire.Error)) route {
	subject := ep.Subject
	return route{subject: subject, handler: func(m *nats.Msg) {
		var req Req
		werr := wire.DecodeRequest(subject, m.Data, &req)
		if werr == nil {
			werr = s.authorize(any(&req).(authed).GetAuth(), subject)
		}
		var body *Rep
		if werr == nil {
			body, werr = fn(&req)
		}
		if werr != nil {
			s.log.Debug("control request refused", "subject", subject, "code", werr.Code, "err", werr.Message)
		}
		if m.Reply == "" {
			return // a publish, not a request: nobody to answer
		}
		if err := m.Respond(wire.EncodeReply(body, werr)); err != nil {
			s.log.Debug("reply failed", "subject", subject, "err", err)
		}
	}}
}

// authorize checks a request's token and that its role may call subject.
func (s *Server) authorize(a wire.Auth, subject string) *wire.Error {
	if a.From == "" || len(a.From) > 256 {
		return wire.Errorf(wire.CodeBadRequest, "request must name its sender in \"from\" (1-256 characters)")
	}
	// One read of the state per request: heartbeats come through here.
	var role Role
	var err error
	var why string // a worker token acting as a worker it did not register
	own := s.adminToken()
	s.fsm.Read(func(st *State, _ uint64) {
		var id string
		if role, id, err = roleIn(st, a.Token, own, time.Now()); err == nil {
			why = actsAs(st.Workers[a.From], role, id)
		}
	})
	if err != nil {
		return wire.Errorf(wire.CodeAuth, "%s from %q: %v", subject, a.From, err)
	}
	if !mayCall(role, subject) {
		return wire.Errorf(wire.CodeAuth, "%s from %q: a %s token may not call it (use the admin token)", subject, a.From, role)
	}
	if why != "" {
		return wire.Errorf(wire.CodeAuth, "%s from %q: %s", subject, a.From, why)
	}
	return nil
}

// toWireError maps an internal error to a reply error with a stable code.
func toWireError(err error) *wire.Error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUnknownWorker):
		return wire.Errorf(wire.CodeUnknown, "%v", err)
	case errors.Is(err, ErrStaleInstance):
		return wire.Errorf(wire.CodeStale, "%v", err)
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return wire.Errorf(wire.CodeNotLeader, "%v; retry", err)
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrRaftShutdown):
		return wire.Errorf(wire.CodeUnavailable, "%v; retry", err)
	}
	return wire.Errorf(wire.CodeInternal, "%v", err)
}

func (s *Server) lookupWorker(id string) (WorkerRecord, bool) {
	var rec WorkerRecord
	var ok bool
	s.fsm.Read(func(st *State, _ uint64) {
		if w, found := st.Workers[id]; found {
			rec, ok = *w, true
		}
	})
	return rec, ok
}

func validateRegister(r *wire.RegisterRequest) error {
	if err := wire.ValidateID("worker", r.From); err != nil {
		return err
	}
	switch {
	case r.Instance == "" || len(r.Instance) > 64:
		return errors.New("instance must be 1-64 characters")
	case r.Host == "" || len(r.Host) > 253:
		return errors.New("host must be 1-253 characters")
	case r.Device == "" || len(r.Device) > 64:
		return errors.New("device must be 1-64 characters")
	case len(r.Devices) > 64:
		return fmt.Errorf("%d devices listed; at most 64", len(r.Devices))
	case r.Capacity < 0 || r.Capacity > 1024:
		return fmt.Errorf("capacity %d out of range 0-1024 (0: joins but cannot train)", r.Capacity)
	case len(r.Build) > 128:
		return errors.New("build string longer than 128 characters")
	}
	for _, d := range r.Devices {
		if d.Name == "" || len(d.Name) > 64 || len(d.Kind) > 16 || len(d.Detail) > 256 {
			return fmt.Errorf("device %q: name must be 1-64 characters, kind up to 16, detail up to 256", d.Name)
		}
	}
	return nil
}

func (s *Server) handleRegister(req *wire.RegisterRequest) (*wire.RegisterReply, *wire.Error) {
	if err := validateRegister(req); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "register: %v", err)
	}
	now := time.Now()
	if old, ok := s.lookupWorker(req.From); ok && old.Instance != req.Instance && old.State != wire.WorkerLost && old.Host != req.Host {
		if last, seen := s.live.last(req.From); seen && now.Sub(last) <= s.cfg.WorkerTimeout {
			return nil, wire.Errorf(wire.CodeConflict, "worker id %q is in use by a live worker on host %s; pick another --id", req.From, old.Host)
		}
	}
	_, tokenID, _ := s.tokenRole(req.Token) // authorized before the handler
	rec := WorkerRecord{
		ID: req.From, Instance: req.Instance, Host: req.Host, Device: req.Device,
		Devices: req.Devices, Capacity: req.Capacity, Build: req.Build,
		Since: now.UTC(), Registered: now.UTC(), TokenID: tokenID,
	}
	if err := s.raftApply(CmdRegisterWorker, RegisterWorkerCmd{Worker: rec}); err != nil {
		return nil, toWireError(err)
	}
	s.live.seen(req.From, now)
	s.log.Info("worker registered", "worker", req.From, "host", req.Host, "device", req.Device)
	stored, _ := s.lookupWorker(req.From)
	return &wire.RegisterReply{
		Worker:            s.workerToWire(stored),
		HeartbeatInterval: wire.Duration(s.cfg.HeartbeatInterval),
		Desired:           s.desiredState(stored),
		Leader:            s.cfg.NodeID,
	}, nil
}

// desiredState is what a worker should do: train the run it is a member
// of (with its rank in the run's current generation), else be idle.
func (s *Server) desiredState(w WorkerRecord) wire.DesiredState {
	var d wire.DesiredState
	s.fsm.Read(func(st *State, _ uint64) { d = desiredIn(st, w) })
	return d
}

// desiredIn is what worker w should be doing according to st (read under
// the FSM read lock): a pure function of the replicated state.
func desiredIn(st *State, w WorkerRecord) wire.DesiredState {
	idle := wire.DesiredState{State: wire.WorkerIdle}
	if w.Run == "" || w.State == wire.WorkerLost {
		return idle
	}
	r, ok := st.Runs[w.Run]
	if !ok || r.State != RunRunning {
		return idle
	}
	rank, member := r.Members[w.ID]
	if !member {
		return idle
	}
	return wire.DesiredState{State: wire.WorkerTraining, Run: r.ID, Generation: r.Generation, Rank: rank, World: len(r.Members),
		Backend: r.Policy.Backend, StartStep: r.StartStep, CheckpointRequests: r.CheckpointRequests}
}

func (s *Server) handleHeartbeat(req *wire.HeartbeatRequest) (*wire.HeartbeatReply, *wire.Error) {
	if err := wire.ValidateID("worker", req.From); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "heartbeat: %v", err)
	}
	// One read gives both the worker and what it should do.
	var rec WorkerRecord
	var desired wire.DesiredState
	var ok bool
	s.fsm.Read(func(st *State, _ uint64) {
		if w, found := st.Workers[req.From]; found {
			rec, ok = *w, true
			desired = desiredIn(st, rec)
		}
	})
	if !ok {
		return nil, wire.Errorf(wire.CodeUnknown, "worker %q is not registered; register first", req.From)
	}
	if rec.Instance != req.Instance {
		return nil, wire.Errorf(wire.CodeStale, "worker %q has been taken over by instance %s on host %s; this process (instance %s) should stop", req.From, rec.Instance, rec.Host, req.Instance)
	}
	now := time.Now()
	s.live.seen(req.From, now)
	if rec.State == wire.WorkerLost {
		cmd := SetWorkerStateCmd{ID: req.From, State: wire.WorkerIdle, Reason: "heartbeats resumed", At: now.UTC()}
		if err := s.raftApply(CmdSetWorkerState, cmd); err != nil {
			return nil, toWireError(err)
		}
		s.log.Info("worker back", "worker", req.From)
	}
	return &wire.HeartbeatReply{Desired: desired, Leader: s.cfg.NodeID}, nil
}

func (s *Server) handleDeregister(req *wire.DeregisterRequest) (*wire.DeregisterReply, *wire.Error) {
	if err := wire.ValidateID("worker", req.From); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "deregister: %v", err)
	}
	if len(req.Reason) > 256 {
		req.Reason = req.Reason[:256]
	}
	cmd := DeregisterWorkerCmd{ID: req.From, Instance: req.Instance, Reason: req.Reason, At: time.Now().UTC()}
	if err := s.raftApply(CmdDeregisterWorker, cmd); err != nil {
		return nil, toWireError(err)
	}
	s.live.forget(req.From)
	s.log.Info("worker left", "worker", req.From, "reason", req.Reason)
	return &wire.DeregisterReply{Removed: true}, nil
}

func (s *Server) handleStatus(*wire.StatusRequest) (*wire.Status, *wire.Error) {
	st, err := s.Status()
	if err != nil {
		return nil, toWireError(err)
	}
	return &st, nil
}

func (s *Server) handleWorkers(*wire.WorkersRequest) (*wire.WorkersReply, *wire.Error) {
	return &wire.WorkersReply{Workers: s.Workers()}, nil
}

func (s *Server) handleRaftPeers(*wire.RaftPeersRequest) (*wire.RaftPeersReply, *wire.Error) {
	peers, err := s.peers()
	if err != nil {
		return nil, toWireError(err)
	}
	return &wire.RaftPeersReply{Peers: peers}, nil
}

func (s *Server) handleRaftJoin(req *wire.RaftJoinRequest) (*wire.RaftJoinReply, *wire.Error) {
	reply, err := s.addVoter(req)
	if err != nil {
		var werr *wire.Error
		if errors.As(err, &werr) {
			return nil, werr
		}
		return nil, toWireError(err)
	}
	return reply, nil
}

func (s *Server) handleRaftRemove(req *wire.RaftRemoveRequest) (*wire.Empty, *wire.Error) {
	cfgf := s.raft.GetConfiguration()
	if err := cfgf.Error(); err != nil {
		return nil, toWireError(err)
	}
	found := false
	for _, srv := range cfgf.Configuration().Servers {
		found = found || string(srv.ID) == req.ID
	}
	if !found {
		return nil, wire.Errorf(wire.CodeBadRequest, "raft remove: no coordinator %q in the raft configuration", req.ID)
	}
	if err := s.raft.RemoveServer(raft.ServerID(req.ID), 0, raftApplyTimeout).Error(); err != nil {
		return nil, toWireError(err)
	}
	if req.ID != s.cfg.NodeID {
		if err := s.raftApply(CmdRemoveCoordinator, RemoveCoordinatorCmd{ID: req.ID}); err != nil {
			s.log.Warn("forget removed coordinator", "id", req.ID, "err", err)
		}
	}
	s.log.Info("coordinator removed from the cluster", "id", req.ID, "by", req.From)
	return &wire.Empty{}, nil
}

func (s *Server) handleRaftTransfer(req *wire.RaftTransferRequest) (*wire.Empty, *wire.Error) {
	var f raft.Future
	if req.ID == "" {
		f = s.raft.LeadershipTransfer()
	} else {
		if req.ID == s.cfg.NodeID {
			return nil, wire.Errorf(wire.CodeBadRequest, "raft transfer: %q already leads", req.ID)
		}
		addr := ""
		cfgf := s.raft.GetConfiguration()
		if err := cfgf.Error(); err != nil {
			return nil, toWireError(err)
		}
		for _, srv := range cfgf.Configuration().Servers {
			if string(srv.ID) == req.ID && srv.Suffrage == raft.Voter {
				addr = string(srv.Address)
			}
		}
		if addr == "" {
			return nil, wire.Errorf(wire.CodeBadRequest, "raft transfer: no voter %q in the raft configuration", req.ID)
		}
		f = s.raft.LeadershipTransferToServer(raft.ServerID(req.ID), raft.ServerAddress(addr))
	}
	if err := f.Error(); err != nil {
		return nil, wire.Errorf(wire.CodeUnavailable, "raft transfer: %v", err)
	}
	s.log.Info("leadership transferred", "to", req.ID, "by", req.From)
	return &wire.Empty{}, nil
}

func (s *Server) handleAnnounce(req *wire.AnnounceRequest) (*wire.Empty, *wire.Error) {
	c := req.Coordinator
	if err := wire.ValidateID("coordinator", c.ID); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "announce: %v", err)
	}
	member := false
	cfgf := s.raft.GetConfiguration()
	if err := cfgf.Error(); err != nil {
		return nil, toWireError(err)
	}
	for _, srv := range cfgf.Configuration().Servers {
		member = member || string(srv.ID) == c.ID
	}
	if !member {
		return nil, wire.Errorf(wire.CodeBadRequest, "announce: %q is not in the raft configuration; join first", c.ID)
	}
	rec := CoordinatorRecord{ID: c.ID, RaftAddr: c.RaftAddr, HTTPAddr: c.HTTPAddr, NATSURL: c.NATSURL, NATSRoute: c.NATSRoute}
	if err := s.raftApply(CmdUpsertCoordinator, UpsertCoordinatorCmd{Coordinator: rec}); err != nil {
		return nil, toWireError(err)
	}
	return &wire.Empty{}, nil
}
