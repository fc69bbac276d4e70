package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/natsembed"
	"github.com/lavit-org/lavit/internal/wire"
)

// Server is one coordinator node: a raft replica of the FSM, an embedded
// NATS server (unless an external one is used), the HTTP API, and, while
// it leads, the control service.
type Server struct {
	cfg Config
	log *slog.Logger
	// token is the admin token this node uses, nextToken a rotation's
	// next one (rotate.go); both change when a rotation does.
	tokenMu          sync.Mutex
	token, nextToken string
	staleTokenLogged bool      // syncAdminKeys said once that the token is stale
	keyTokens        [2]string // the tokens keys was last set from
	// keys holds this node's certificate from the cluster CA (derived
	// from the admin token) and the CAs it trusts: raft and NATS routes
	// use them for mutual TLS, NATS clients and the HTTP API for TLS.
	keys *clusterca.Keyring
	// natsPassword is this process's own NATS connection's password.
	natsPassword string

	tokenGenerated bool

	lock      *datadir.Lock
	fsm       *FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	logStore  *wal.WAL
	walMeta   *metadb.BoltMetaDB
	natsSrv   *natsembed.Server // nil with an external NATS
	nc        *nats.Conn
	httpSrv   *http.Server
	httpAddr  string

	leaderCh  chan bool
	live      *liveness
	meet      *rendezvousTable // leader only: ring addresses and NCCL ids per generation
	progress  *progressTable   // leader only: each run's latest progress report
	ckpts     *ckptTable       // leader only: checkpoint parts reported, per (run, step)
	schedKick chan struct{}    // wakes the scheduler (see kickScheduler)

	// term is the current leadership term's context and background work
	// (see goLeader); nil while this node does not lead.
	termMu sync.Mutex
	term   *leaderTerm

	shutdownOnce sync.Once
	// ctx ends when the node shuts down; everything the node runs in the
	// background stops with it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New starts a coordinator node: it locks the data dir, opens raft,
// bootstraps or joins the cluster, starts NATS and the HTTP API. It returns
// once the node runs; leadership is settled in the background.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = logging.Discard()
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.NodeID),
		fsm:       NewFSM(cfg.Logger.With("component", "fsm")),
		leaderCh:  make(chan bool, 16),
		live:      newLiveness(),
		meet:      newRendezvousTable(),
		progress:  newProgressTable(),
		ckpts:     newCkptTable(),
		schedKick: make(chan struct{}, 1),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	started := false
	defer func() {
		if !started {
			s.closeAll()
		}
	}()

	var err error
	if s.lock, err = datadir.Acquire(cfg.DataDir); err != nil {
		return nil, err
	}
	snaps, hasState, err := s.openRaftStores()
	if err != nil {
		return nil, err
	}
	// Settle the token before raft starts, so a bad token never leaves a
	// half-bootstrapped data dir behind.
	tok, generated, err := datadir.ResolveToken(cfg.DataDir, cfg.Token, !hasState && cfg.Join == "" && len(cfg.Peers) == 0 && !cfg.NoBootstrap)
	if err != nil {
		return nil, err
	}
	s.token, s.tokenGenerated = tok, generated
	if err = s.openKeys(); err != nil {
		return nil, err
	}
	if err = s.startRaft(snaps, hasState); err != nil {
		return nil, err
	}
	if generated {
		s.log.Info("generated a join token; workers and clients need it (LAVIT_TOKEN)", "path", datadir.TokenPath(cfg.DataDir))
	}

	// Start serving HTTP early: a joining node's peers may ask for it.
	if err = s.startHTTP(); err != nil {
		return nil, err
	}

	var routes []string
	if cfg.Join != "" && !hasState {
		if routes, err = s.joinCluster(); err != nil {
			return nil, err
		}
	}
	if err = s.startNATS(routes); err != nil {
		return nil, err
	}

	s.wg.Add(2)
	go s.monitorLeadership()
	go s.watchState()
	started = true
	s.log.Info("coordinator started", "raft", s.transport.LocalAddr(), "http", s.httpAddr, "nats", s.NATSURL(), "data_dir", cfg.DataDir)
	return s, nil
}

// openKeys derives the cluster CA from the admin token and issues this
// node's certificate. A rotation's next token saved in the data dir
// (rotate.go) is trusted too until the replicated state says how the
// rotation went, so a node restarted mid-rotation reaches peers that
// finished it.
func (s *Server) openKeys() error {
	ca, err := clusterca.Derive(s.token)
	if err != nil {
		return err
	}
	if s.keys, err = clusterca.NewKeyring(s.cfg.NodeID, ca); err != nil {
		return err
	}
	if s.nextToken, err = datadir.ReadNextToken(s.cfg.DataDir); err != nil {
		return err
	}
	if s.nextToken != "" {
		if err := s.setKeys(s.token, s.nextToken); err != nil {
			return fmt.Errorf("the saved next admin token: %w", err)
		}
	} else {
		s.keyTokens = [2]string{s.token, ""}
	}
	if s.natsPassword, err = datadir.NewToken(); err != nil {
		return err
	}
	return nil
}

// openRaftStores opens the raft log store, snapshots and transport, and
// reports whether the data dir already holds raft state.
func (s *Server) openRaftStores() (raft.SnapshotStore, bool, error) {
	cfg := s.cfg
	raftDir := filepath.Join(cfg.DataDir, "raft")
	walDir := filepath.Join(raftDir, "wal")
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create raft dir: %w", err)
	}
	var err error
	// raft-wal's Close does not close its metadata DB (a bolt file with
	// its own flock), so we own it and close it ourselves; otherwise a
	// node restarted in the same process could never reopen its log.
	s.walMeta = &metadb.BoltMetaDB{}
	if s.logStore, err = wal.Open(walDir, wal.WithMetaStore(s.walMeta)); err != nil {
		return nil, false, fmt.Errorf("open raft log %q: %w", walDir, err)
	}
	hl := logging.HCLog(s.log, "raft", hclog.Warn)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, hl)
	if err != nil {
		return nil, false, fmt.Errorf("open raft snapshots in %q: %w", raftDir, err)
	}
	hasState, err := raft.HasExistingState(s.logStore, s.logStore, snaps)
	if err != nil {
		return nil, false, fmt.Errorf("read raft state: %w", err)
	}
	return snaps, hasState, nil
}

// openRaftTransport listens for raft on mutual TLS with this node's
// certificate of the cluster CA (raftls.go).
func (s *Server) openRaftTransport(hl hclog.Logger) error {
	cfg := s.cfg
	var advertise net.Addr
	if cfg.RaftAdvertise != "" {
		var err error
		if advertise, err = net.ResolveTCPAddr("tcp", cfg.RaftAdvertise); err != nil {
			return fmt.Errorf("--raft-advertise %q: %w", cfg.RaftAdvertise, err)
		}
	}
	stream, err := newTLSStreamLayer(cfg.RaftAddr, advertise, s.keys.MutualTLS())
	if err != nil {
		return fmt.Errorf("raft transport on %s: %w", cfg.RaftAddr, err)
	}
	s.transport = raft.NewNetworkTransportWithLogger(stream, 3, 10*time.Second, hl)
	return nil
}

// startRaft starts the raft node, bootstrapping a new cluster when this
// node has no state and is not joining one.
func (s *Server) startRaft(snaps raft.SnapshotStore, hasState bool) error {
	cfg := s.cfg
	hl := logging.HCLog(s.log, "raft", hclog.Warn)
	if err := s.openRaftTransport(hl); err != nil {
		return err
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.RaftHeartbeatTimeout
	rc.ElectionTimeout = cfg.RaftElectionTimeout
	rc.LeaderLeaseTimeout = cfg.RaftLeaderLease
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.NotifyCh = s.leaderCh
	rc.Logger = hl
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("raft config: %w", err)
	}
	var err error
	if s.raft, err = raft.NewRaft(rc, s.fsm, s.logStore, s.logStore, snaps, s.transport); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	if hasState {
		if cfg.Join != "" || len(cfg.Peers) > 0 {
			s.log.Info("data dir already holds raft state; ignoring --join/--peers and rejoining the existing cluster")
		}
		return nil
	}
	if cfg.Join != "" || cfg.NoBootstrap {
		return nil
	}
	servers := []raft.Server{{ID: rc.LocalID, Address: s.transport.LocalAddr()}}
	if len(cfg.Peers) > 0 {
		peers, _ := ParsePeers(cfg.Peers) // validated
		servers = servers[:0]
		for _, p := range peers {
			servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
		}
	}
	if err := s.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return fmt.Errorf("bootstrap raft cluster: %w", err)
	}
	s.log.Info("bootstrapped a new raft cluster", "servers", len(servers))
	return nil
}

// startNATS starts the embedded NATS server (or dials the external one) and
// the coordinator's own client connection.
func (s *Server) startNATS(joinRoutes []string) error {
	cfg := s.cfg
	url := cfg.NATSURL
	opts := []nats.Option{
		nats.Name("lavit-coord " + cfg.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
	}
	if url == "" {
		// The embedded server knows its coordinator by a password only
		// this process holds (access.go).
		opts = append(opts, nats.UserInfo(coordinatorNATSUser, s.natsPassword))
		saved, err := datadir.ReadRoutes(cfg.DataDir)
		if err != nil {
			s.log.Warn("ignoring saved NATS routes", "err", err)
		}
		routes := mergeRoutes(cfg.NATSRoutes, joinRoutes, saved)
		s.natsSrv, err = natsembed.Start(natsembed.Options{
			ServerName:  cfg.NodeID,
			ClientAddr:  cfg.NATSAddr,
			ClusterAddr: cfg.NATSClusterAddr,
			Routes:      routes,
			StoreDir:    filepath.Join(cfg.DataDir, "nats"),
			MaxPayload:  1 << 20,
			// Nothing connects without a valid token, and each token's
			// role bounds what it may publish and subscribe to.
			Authenticate: s.natsGrant,
			// Clients over TLS with this node's certificate (they pin
			// the CA); routes over mutual TLS, coordinators only.
			TLS:      s.clientTLS(),
			RouteTLS: s.keys.MutualTLS(),
			Logger:   s.log.With("component", "nats"),
		})
		if err != nil {
			return fmt.Errorf("embedded nats: %w", err)
		}
		// In process, without TLS: the URL's tls:// scheme would ask for it.
		url = strings.Replace(s.natsSrv.ClientURL(), "tls://", "nats://", 1)
		opts = append(opts, nats.InProcessServer(s.natsSrv.Inner()))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	s.nc = nc
	return nil
}

// clientTLS is the embedded NATS's TLS for clients: this node's
// certificate, or none with Config.PlaintextNATS.
func (s *Server) clientTLS() *tls.Config {
	if s.cfg.PlaintextNATS {
		s.log.Warn("serving NATS clients without TLS (--plaintext-nats): tokens travel in clear")
		return nil
	}
	return s.keys.ServerTLS()
}

// mergeRoutes joins route lists without duplicates, in order.
func mergeRoutes(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		for _, r := range l {
			if r != "" && !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	return out
}

// NATSURL is the client URL of this node's NATS (embedded or external).
func (s *Server) NATSURL() string {
	if s.natsSrv != nil {
		return s.natsSrv.ClientURL()
	}
	return s.cfg.NATSURL
}

// NATSRoute is this node's NATS route URL ("" without an embedded server).
func (s *Server) NATSRoute() string {
	if s.natsSrv != nil {
		return s.natsSrv.RouteURL()
	}
	return ""
}

// RaftAddr is the address peers dial for raft.
func (s *Server) RaftAddr() string { return string(s.transport.LocalAddr()) }

// HTTPAddr is the bound HTTP address.
func (s *Server) HTTPAddr() string { return s.httpAddr }

// ID is the node id.
func (s *Server) ID() string { return s.cfg.NodeID }

// Token is the join token this node uses.
func (s *Server) Token() string { return s.adminToken() }

// TokenGenerated reports whether this start generated the token (the CLI
// prints it once).
func (s *Server) TokenGenerated() bool { return s.tokenGenerated }

// IsLeader reports whether this node is the raft leader.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the current leader's id ("" if unknown).
func (s *Server) Leader() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// self is this node's coordinator record.
func (s *Server) self() CoordinatorRecord {
	return CoordinatorRecord{
		ID: s.cfg.NodeID, RaftAddr: s.RaftAddr(), HTTPAddr: s.httpAddr,
		NATSURL: s.NATSURL(), NATSRoute: s.NATSRoute(),
	}
}

// watchState keeps things derived from the replicated state up to date:
// the saved NATS route list, this node's own coordinator record (it
// announces itself to the leader until the record matches), and the
// embedded NATS's connections (a revoked or expired token's are closed).
func (s *Server) watchState() {
	defer s.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var savedRoutes []string
	var checkedTokens string // the token ids the connections were last checked against
	var recheckAt time.Time  // when the next token expires
	var pruned time.Time     // when closed connections were last forgotten
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.fsm.Changed():
		case <-tick.C:
		}
		var routes []string
		var mine *CoordinatorRecord
		var tokens []string
		var nextExpiry time.Time
		var adminHash string
		var rotation *AdminRotation
		now := time.Now()
		s.fsm.Read(func(st *State, _ uint64) {
			adminHash = st.TokenHash
			if st.AdminRotation != nil {
				r := *st.AdminRotation
				rotation = &r
			}
			for id, c := range st.Coordinators {
				if id == s.cfg.NodeID {
					cc := *c
					mine = &cc
				} else if c.NATSRoute != "" {
					routes = append(routes, c.NATSRoute)
				}
			}
			for id, t := range st.Tokens {
				tokens = append(tokens, id)
				if t.Expires.After(now) && (nextExpiry.IsZero() || t.Expires.Before(nextExpiry)) {
					nextExpiry = t.Expires
				}
			}
		})
		s.syncAdminKeys(adminHash, rotation)
		// The admin tokens count among the tokens whose change rechecks
		// the connections (a finished rotation retires the old one).
		tokens = append(tokens, adminHash)
		if rotation != nil {
			tokens = append(tokens, hashToken(rotation.NewToken))
		}
		slices.Sort(tokens)
		if ids := strings.Join(tokens, ","); s.natsSrv != nil && (ids != checkedTokens || (!recheckAt.IsZero() && !now.Before(recheckAt))) {
			if n := s.natsSrv.Recheck(); n > 0 {
				s.log.Info("closed NATS connections of revoked or expired tokens", "connections", n)
			}
			checkedTokens, recheckAt, pruned = ids, nextExpiry, now
		} else if s.natsSrv != nil && now.Sub(pruned) >= time.Minute {
			s.natsSrv.Prune() // forget the credentials of closed connections
			pruned = now
		}
		slices.Sort(routes)
		if s.natsSrv != nil && len(routes) > 0 && !slices.Equal(routes, savedRoutes) {
			if err := datadir.WriteRoutes(s.cfg.DataDir, routes); err != nil {
				s.log.Warn("save NATS routes", "err", err)
			} else {
				savedRoutes = routes
			}
		}
		if self := s.self(); mine == nil || *mine != self {
			s.announce(self)
		}
	}
}

// announce records this node's addresses in the FSM through the leader.
func (s *Server) announce(self CoordinatorRecord) {
	if s.IsLeader() {
		if err := s.raftApply(CmdUpsertCoordinator, UpsertCoordinatorCmd{Coordinator: self}); err != nil {
			s.log.Debug("record own coordinator entry", "err", err)
		}
		return
	}
	if s.Leader() == "" {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	c := &wire.Client{NC: s.nc, Token: s.adminToken(), From: s.cfg.NodeID}
	req := &wire.AnnounceRequest{Coordinator: recordToWire(self)}
	if _, err := wire.Announce.Call(ctx, c, req); err != nil {
		s.log.Debug("announce to leader", "err", err)
	}
}

// raftApplyTimeout bounds one proposal.
const raftApplyTimeout = 5 * time.Second

// raftApply is the one way to write to the replicated state: encode the
// command, propose it, wait for it to be applied, and return the FSM's
// verdict.
func (s *Server) raftApply(t CommandType, body any) error {
	data, err := encodeCommand(t, body)
	if err != nil {
		return err
	}
	f := s.raft.Apply(data, raftApplyTimeout)
	if err := f.Error(); err != nil {
		return fmt.Errorf("raft apply %s: %w", t, err)
	}
	if r, ok := f.Response().(applyResponse); ok && r.Err != nil {
		return r.Err
	}
	return nil
}

// Shutdown stops the node gracefully: a leader first hands leadership to
// another voter so the cluster does not wait for an election timeout.
func (s *Server) Shutdown() error {
	return s.stop(true)
}

// Kill stops the node abruptly, like a crash: no leadership transfer. The
// data dir stays intact (tests use it to simulate a lost leader).
func (s *Server) Kill() error {
	return s.stop(false)
}

func (s *Server) stop(graceful bool) error {
	var err error
	s.shutdownOnce.Do(func() {
		if graceful && s.raft != nil && s.IsLeader() && s.voterCount() > 1 {
			s.log.Info("transferring leadership before shutdown")
			if terr := s.raft.LeadershipTransfer().Error(); terr != nil {
				s.log.Warn("leadership transfer failed; the others will elect a leader", "err", terr)
			}
		}
		s.cancel()
		err = s.closeAll()
		s.wg.Wait()
		s.log.Info("coordinator stopped")
	})
	return err
}

// closeAll releases everything New may have opened, in reverse order.
func (s *Server) closeAll() error {
	s.cancel()
	var errs []error
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.httpSrv.Shutdown(ctx)
		cancel()
	}
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
	}
	if s.transport != nil {
		s.transport.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.natsSrv != nil {
		s.natsSrv.Shutdown()
	}
	if s.logStore != nil {
		if err := s.logStore.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft log: %w", err))
		}
	}
	if s.walMeta != nil {
		if err := s.walMeta.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft log metadata: %w", err))
		}
	}
	s.lock.Release()
	return errors.Join(errs...)
}

func (s *Server) voterCount() int {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}
