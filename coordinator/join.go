package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/wire"
)

// Joining: a new node (no raft state, --join ADDR) starts raft without
// bootstrapping, then POSTs /v1/raft/join to any member's HTTP API over
// HTTPS, accepting only a certificate of the cluster CA it derived from
// the admin token it holds (so a stranger on the path can neither learn
// the token nor answer for the cluster). It needs no certificate from
// the leader: every holder of the admin token derives the same CA and
// issues itself a certificate (internal/clusterca). That
// member forwards the request to the leader over NATS (or serves it if it
// leads); the leader adds the node as a voter and answers with the NATS
// route URLs of the cluster, which the new node's embedded NATS server
// routes to. Raft is started first so the leader can replicate to the node
// as soon as it is a voter (quorum is never waiting on a node that is not
// listening yet).

// joinTimeout bounds how long a node keeps trying to join.
const joinTimeout = 2 * time.Minute

// joinURL turns "host:port" or "https://host:port" into the join endpoint.
func joinURL(addr string) (string, error) {
	if strings.HasPrefix(addr, "http://") {
		return "", fmt.Errorf("--join %q: the coordinators' HTTP API is HTTPS only; give host:port or https://host:port", addr)
	}
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	return strings.TrimRight(addr, "/") + "/v1/raft/join", nil
}

// joinCluster asks an existing member to add this node, retrying with
// backoff while the member is unreachable or has no leader, for up to
// joinTimeout.
func (s *Server) joinCluster() ([]string, error) {
	req := wire.RaftJoinRequest{
		Auth:     wire.Auth{V: wire.Version, Token: s.adminToken(), From: s.cfg.NodeID},
		ID:       s.cfg.NodeID,
		RaftAddr: s.RaftAddr(),
		HTTPAddr: s.httpAddr,
	}
	body, _ := json.Marshal(req)
	url, err := joinURL(s.cfg.Join)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: s.keys.Current().ClientTLS()}}
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	var reply *wire.RaftJoinReply
	err = retry.Do(ctx, retry.Backoff{Initial: 200 * time.Millisecond, Max: 3 * time.Second, Jitter: 0.5}, func(int) error {
		var err error
		var again bool
		if reply, err, again = s.postJoin(client, url, body); err != nil && !again {
			return retry.Permanent(err)
		}
		return err
	}, func(t retry.Try) {
		s.log.Info("waiting to join the cluster", "via", s.cfg.Join, "attempt", t.Attempt, "retry_in", t.Wait.Round(time.Millisecond), "err", t.Err)
	})
	switch {
	case err == nil:
		s.log.Info("joined the cluster", "via", s.cfg.Join, "leader", reply.Leader)
		return reply.NATSRoutes, nil
	case s.ctx.Err() != nil:
		return nil, errors.New("shut down while joining")
	case ctx.Err() != nil:
		return nil, fmt.Errorf("join %s: gave up after %s: %w", s.cfg.Join, joinTimeout, err)
	}
	return nil, fmt.Errorf("join %s: %w", s.cfg.Join, err)
}

// postJoin makes one join attempt; retry says whether trying again may help.
func (s *Server) postJoin(client *http.Client, url string, body []byte) (*wire.RaftJoinReply, error, bool) {
	hreq, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	hreq.Header.Set("Authorization", "Bearer "+s.adminToken())
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(hreq)
	if errors.Is(err, clusterca.ErrWrongCluster) {
		// The member's CA is not the one our token derives: our token is
		// not that cluster's admin token. Waiting will not change it.
		return nil, fmt.Errorf("%s: %w", url, err), false
	}
	if err != nil {
		return nil, err, true
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxMessageBytes))
	if err != nil {
		return nil, err, true
	}
	var reply wire.RaftJoinReply
	if err := wire.DecodeReply("join", data, &reply); err != nil {
		// Refusals that will not change by waiting: stop at once.
		permanent := wire.HasCode(err, wire.CodeAuth) || wire.HasCode(err, wire.CodeBadRequest)
		return nil, err, !permanent
	}
	return &reply, nil, false
}

// addVoter adds (or re-adds) a coordinator as a voter. Only the leader
// can; followers forward.
func (s *Server) addVoter(req *wire.RaftJoinRequest) (*wire.RaftJoinReply, error) {
	if err := wire.ValidateID("coordinator", req.ID); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "raft join: %v", err)
	}
	if req.RaftAddr == "" {
		return nil, wire.Errorf(wire.CodeBadRequest, "raft join: raft_addr is empty")
	}
	if !s.IsLeader() {
		return nil, wire.Errorf(wire.CodeNotLeader, "raft join: %s is not the leader; retry", s.cfg.NodeID)
	}
	cfgf := s.raft.GetConfiguration()
	if err := cfgf.Error(); err != nil {
		return nil, err
	}
	id, addr := raft.ServerID(req.ID), raft.ServerAddress(req.RaftAddr)
	already := false
	for _, srv := range cfgf.Configuration().Servers {
		switch {
		case srv.ID == id && srv.Address == addr:
			already = true
		case srv.ID == id || srv.Address == addr:
			// Same id at a new address, or a new id at an old address: the
			// old entry is stale (a node came back with new settings).
			if err := s.raft.RemoveServer(srv.ID, 0, raftApplyTimeout).Error(); err != nil {
				return nil, fmt.Errorf("remove stale raft entry %s at %s: %w", srv.ID, srv.Address, err)
			}
			s.log.Info("removed stale raft entry", "id", srv.ID, "addr", srv.Address)
		}
	}
	if !already {
		if err := s.raft.AddVoter(id, addr, 0, raftApplyTimeout).Error(); err != nil {
			return nil, fmt.Errorf("add voter %s at %s: %w", id, addr, err)
		}
		s.log.Info("coordinator joined", "id", req.ID, "raft", req.RaftAddr)
	}
	rec := CoordinatorRecord{ID: req.ID, RaftAddr: req.RaftAddr, HTTPAddr: req.HTTPAddr, NATSURL: req.NATSURL, NATSRoute: req.NATSRoute}
	if err := s.raftApply(CmdUpsertCoordinator, UpsertCoordinatorCmd{Coordinator: rec}); err != nil {
		return nil, err
	}
	var routes []string
	s.fsm.Read(func(st *State, _ uint64) {
		for cid, c := range st.Coordinators {
			if cid != req.ID && c.NATSRoute != "" {
				routes = append(routes, c.NATSRoute)
			}
		}
	})
	return &wire.RaftJoinReply{Leader: s.cfg.NodeID, NATSRoutes: routes}, nil
}

// forwardJoin sends a join request to the leader over NATS.
func (s *Server) forwardJoin(ctx context.Context, req *wire.RaftJoinRequest) (*wire.RaftJoinReply, error) {
	c := &wire.Client{NC: s.nc, Token: req.Token, From: req.From}
	return wire.JoinRaft.Call(ctx, c, req)
}
