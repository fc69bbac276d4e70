package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/wire"
)

// monitorLeadership is the one goroutine that owns leadership. raft tells
// it when this node wins or loses; it runs leaderLoop while the node leads
// and waits for that loop to finish before anything else happens.
func (s *Server) monitorLeadership() {
	defer s.wg.Done()
	var stop chan struct{}
	var done chan struct{}
	stopLeading := func() {
		if stop != nil {
			close(stop)
			<-done
			stop, done = nil, nil
		}
	}
	for {
		select {
		case <-s.ctx.Done():
			stopLeading()
			return
		case isLeader := <-s.leaderCh:
			switch {
			case isLeader && stop == nil:
				stop, done = make(chan struct{}), make(chan struct{})
				go func(stop, done chan struct{}) {
					defer close(done)
					s.leaderLoop(stop)
				}(stop, done)
			case !isLeader:
				stopLeading()
			}
		}
	}
}

// leaderLoop runs while this node leads: Barrier (so the FSM holds every
// committed entry), establish leadership (start serving), then watch
// worker liveness until leadership is lost.
func (s *Server) leaderLoop(stop chan struct{}) {
	log := s.log.With("component", "leader")
	start := time.Now()
	for {
		err := s.raft.Barrier(raftApplyTimeout).Error()
		if err == nil {
			break
		}
		log.Warn("barrier failed; retrying", "err", err)
		select {
		case <-stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	subs, err := s.establishLeadership()
	defer s.revokeLeadership(subs)
	if err != nil {
		log.Error("could not establish leadership; stepping down", "err", err)
		s.raft.LeadershipTransfer()
		<-stop
		return
	}
	log.Info("leading the cluster", "took", time.Since(start).Round(time.Millisecond))

	interval := s.cfg.WorkerTimeout / 4
	if interval < 20*time.Millisecond {
		interval = 20 * time.Millisecond
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			s.markLostWorkers()
			s.schedule()
		case <-s.schedKick:
			s.schedule()
		}
	}
}

// leaderTerm is one stretch of leadership: work started for it (goLeader)
// gets its context, which ends when leadership does, and
// revokeLeadership waits for that work to return.
type leaderTerm struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// goLeader runs fn in the background as leader work: fn's context ends
// when this node stops leading, and leadership is not given up before fn
// returns. It reports false, and runs nothing, when this node does not
// lead.
func (s *Server) goLeader(fn func(ctx context.Context)) bool {
	s.termMu.Lock()
	defer s.termMu.Unlock()
	t := s.term
	if t == nil {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		fn(t.ctx)
	}()
	return true
}

// startTerm begins a leadership term.
func (s *Server) startTerm() {
	ctx, cancel := context.WithCancel(context.Background())
	s.termMu.Lock()
	s.term = &leaderTerm{ctx: ctx, cancel: cancel}
	s.termMu.Unlock()
}

// endTerm cancels the term's work and waits for it.
func (s *Server) endTerm() {
	s.termMu.Lock()
	t := s.term
	s.term = nil
	s.termMu.Unlock()
	if t != nil {
		t.cancel()
		t.wg.Wait()
	}
}

// establishLeadership initialises a new cluster if needed, starts every
// known worker's liveness clock, starts the term's context and subscribes
// to the control subjects.
func (s *Server) establishLeadership() ([]*nats.Subscription, error) {
	var clusterID string
	var workers []string
	s.fsm.Read(func(st *State, _ uint64) {
		clusterID = st.ClusterID
		for id, w := range st.Workers {
			if w.State != wire.WorkerLost {
				workers = append(workers, id)
			}
		}
	})
	if clusterID == "" {
		b := make([]byte, 8)
		rand.Read(b)
		cmd := InitClusterCmd{ClusterID: "lavit-" + hex.EncodeToString(b), TokenHash: hashToken(s.adminToken()), At: time.Now().UTC()}
		if err := s.raftApply(CmdInitCluster, cmd); err != nil && !errors.Is(err, ErrAlreadyInitialized) {
			return nil, fmt.Errorf("initialise cluster: %w", err)
		}
		s.log.Info("initialised the cluster", "cluster_id", cmd.ClusterID)
	}
	if err := s.raftApply(CmdUpsertCoordinator, UpsertCoordinatorCmd{Coordinator: s.self()}); err != nil {
		return nil, fmt.Errorf("record own coordinator entry: %w", err)
	}
	s.live.reset(workers, time.Now())
	s.meet.reset()
	s.progress.reset()
	s.ckpts.reset()
	s.startTerm()
	return s.subscribeControl()
}

// revokeLeadership stops serving the control subjects, then ends the term:
// its background work (checkpoint commits, retention) is cancelled and
// waited for, so none of it outlives leadership.
func (s *Server) revokeLeadership(subs []*nats.Subscription) {
	for _, sub := range subs {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			s.log.Debug("unsubscribe", "subject", sub.Subject, "err", err)
		}
	}
	s.endTerm()
	s.live.reset(nil, time.Now())
	if len(subs) > 0 {
		s.log.Info("stopped leading")
	}
}

// markLostWorkers commits a LOST transition for every worker whose
// heartbeats stopped for longer than the timeout.
func (s *Server) markLostWorkers() {
	var candidates []string
	s.fsm.Read(func(st *State, _ uint64) {
		for id, w := range st.Workers {
			if w.State != wire.WorkerLost {
				candidates = append(candidates, id)
			}
		}
	})
	now := time.Now()
	for _, id := range s.live.expired(candidates, now, s.cfg.WorkerTimeout) {
		last, _ := s.live.last(id)
		reason := fmt.Sprintf("no heartbeat for %s", now.Sub(last).Round(time.Millisecond))
		err := s.raftApply(CmdSetWorkerState, SetWorkerStateCmd{ID: id, State: wire.WorkerLost, Reason: reason, At: now.UTC()})
		if err != nil {
			s.log.Warn("mark worker lost", "worker", id, "err", err)
			continue
		}
		s.log.Warn("worker lost", "worker", id, "reason", reason)
	}
}
