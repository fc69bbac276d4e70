package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/wire"
)

// Config is the validated configuration of one coordinator node. The CLI
// fills it from flags and env; tests fill it directly (port 0 everywhere).
type Config struct {
	// NodeID is the node's stable raft id (default: host name).
	NodeID string
	// DataDir holds the raft log, snapshots, the join token and the NATS store.
	DataDir string

	// RaftAddr is the raft transport's bind address; RaftAdvertise the
	// address peers dial (default: the bind address once bound).
	RaftAddr      string
	RaftAdvertise string

	// HTTPAddr serves /healthz, /readyz, /v1/status and /v1/raft/join.
	HTTPAddr string

	// NATSAddr and NATSClusterAddr are the embedded NATS server's client and
	// route listeners. NATSRoutes seeds the routes to other coordinators.
	NATSAddr        string
	NATSClusterAddr string
	NATSRoutes      []string
	// NATSURL, when set, uses that NATS instead of an embedded server.
	NATSURL string
	// PlaintextNATS serves the embedded NATS's clients without TLS (routes
	// keep mutual TLS): only for a network that encrypts for you, such as
	// a service mesh, and for measuring what TLS costs. Tokens then travel
	// in clear; clients need --plaintext-nats.
	PlaintextNATS bool

	// Join is the HTTP address of a member of an existing cluster to join.
	Join string
	// Peers is a fixed initial raft configuration ("id=host:port", this node
	// included): every node given the same list bootstraps the same cluster.
	Peers []string
	// NoBootstrap starts a node without state that waits to be added by an
	// operator (`lavit-coord raft join`) instead of bootstrapping.
	NoBootstrap bool

	// Token is the join token workers and clients must present. Empty on a
	// bootstrapping node: one is generated and saved in DataDir.
	Token string

	// FileRoots are the directories a run's file:// locations must lie
	// under (fileroots.go); none: no file:// location is allowed. The
	// default is the directory the process starts in.
	FileRoots []string

	// WorkerTimeout is how long a worker may miss heartbeats before the
	// leader marks it LOST.
	WorkerTimeout time.Duration
	// HeartbeatInterval is the interval the leader asks workers to use.
	HeartbeatInterval time.Duration

	// Raft timings. Defaults suit a LAN; tests shrink them.
	RaftHeartbeatTimeout time.Duration
	RaftElectionTimeout  time.Duration
	RaftLeaderLease      time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64

	// Build is the version string reported in status.
	Build string

	Logger *slog.Logger
}

// DefaultConfig returns the defaults of `lavit-coord up` with no flags.
func DefaultConfig() Config {
	var roots []string
	if wd, err := os.Getwd(); err == nil {
		roots = []string{wd}
	}
	return Config{
		FileRoots:            roots,
		DataDir:              datadir.Default,
		RaftAddr:             "127.0.0.1:7000",
		HTTPAddr:             "127.0.0.1:8080",
		NATSAddr:             "127.0.0.1:4222",
		NATSClusterAddr:      "127.0.0.1:6222",
		WorkerTimeout:        2 * time.Second,
		HeartbeatInterval:    500 * time.Millisecond,
		RaftHeartbeatTimeout: 500 * time.Millisecond,
		RaftElectionTimeout:  500 * time.Millisecond,
		RaftLeaderLease:      250 * time.Millisecond,
		SnapshotThreshold:    8192,
	}
}

// Peer is one entry of a fixed peer list.
type Peer struct {
	ID   string
	Addr string
}

// ParsePeers parses "id=host:port" entries.
func ParsePeers(list []string) ([]Peer, error) {
	var out []Peer
	seen := map[string]bool{}
	for _, p := range list {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		id, addr, ok := strings.Cut(p, "=")
		if !ok {
			return nil, fmt.Errorf("peer %q: want id=host:port", p)
		}
		if err := wire.ValidateID("peer", id); err != nil {
			return nil, fmt.Errorf("peer %q: %w", p, err)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %q: raft address: %w", p, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("peer %q: id %q appears twice", p, id)
		}
		seen[id] = true
		out = append(out, Peer{ID: id, Addr: addr})
	}
	return out, nil
}

// Validate checks the config and names the first problem it finds.
func (c *Config) Validate() error {
	if err := wire.ValidateID("node", c.NodeID); err != nil {
		return fmt.Errorf("--id: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is empty")
	}
	for _, a := range []struct{ flag, addr string }{
		{"--raft-addr", c.RaftAddr}, {"--http-addr", c.HTTPAddr},
	} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%s %q: %w", a.flag, a.addr, err)
		}
	}
	if c.RaftAdvertise != "" {
		host, _, err := net.SplitHostPort(c.RaftAdvertise)
		if err != nil {
			return fmt.Errorf("--raft-advertise %q: %w", c.RaftAdvertise, err)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("--raft-advertise %q: peers cannot dial an unspecified address", c.RaftAdvertise)
		}
	} else if host, _, _ := net.SplitHostPort(c.RaftAddr); host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
		return fmt.Errorf("--raft-addr %q binds every interface: set --raft-advertise to the address peers should dial", c.RaftAddr)
	}
	if c.PlaintextNATS && c.NATSURL != "" {
		return errors.New("--plaintext-nats is for the embedded NATS server, which --nats-url replaces")
	}
	if c.NATSURL != "" {
		if len(c.NATSRoutes) > 0 {
			return errors.New("--nats-url and --nats-routes contradict each other: routes are for the embedded NATS server, which --nats-url replaces")
		}
	} else {
		if _, _, err := net.SplitHostPort(c.NATSAddr); err != nil {
			return fmt.Errorf("--nats-addr %q: %w", c.NATSAddr, err)
		}
		if c.NATSClusterAddr != "" {
			if _, _, err := net.SplitHostPort(c.NATSClusterAddr); err != nil {
				return fmt.Errorf("--nats-cluster-addr %q: %w", c.NATSClusterAddr, err)
			}
		}
	}
	if c.NoBootstrap && (c.Join != "" || len(c.Peers) > 0) {
		return errors.New("no-bootstrap contradicts --join and --peers")
	}
	if c.Join != "" && len(c.Peers) > 0 {
		return errors.New("--join and --peers contradict each other: join an existing cluster, or bootstrap one from a fixed peer list, not both")
	}
	if len(c.Peers) > 0 {
		peers, err := ParsePeers(c.Peers)
		if err != nil {
			return fmt.Errorf("--peers: %w", err)
		}
		found := false
		for _, p := range peers {
			found = found || p.ID == c.NodeID
		}
		if !found {
			return fmt.Errorf("--peers does not list this node (--id %q)", c.NodeID)
		}
		if c.Token == "" {
			return errors.New("--peers needs --token: every node of a fixed peer list must share the join token")
		}
	}
	if c.NATSURL == "" && len(c.NATSRoutes) == 0 && (c.NoBootstrap || len(c.Peers) > 1) {
		return errors.New("--peers (with other nodes) and --no-bootstrap need --nats-routes: this node's embedded NATS must reach the others' (nats-route://host:port of at least one other coordinator)")
	}
	if (c.Join != "" || c.NoBootstrap) && c.Token == "" {
		return errors.New("--join needs --token (or LAVIT_TOKEN): the cluster's join token, printed by the first node and saved in its data dir as 'token'")
	}
	if c.Token != "" && len(c.Token) < 16 {
		return errors.New("--token is too short: use at least 16 characters")
	}
	if c.WorkerTimeout <= 0 {
		return fmt.Errorf("--worker-timeout %s must be positive", c.WorkerTimeout)
	}
	if c.HeartbeatInterval <= 0 {
		return fmt.Errorf("--heartbeat-interval %s must be positive", c.HeartbeatInterval)
	}
	if c.WorkerTimeout < 2*c.HeartbeatInterval {
		return fmt.Errorf("--worker-timeout %s must be at least twice --heartbeat-interval %s, or one late heartbeat marks a worker lost", c.WorkerTimeout, c.HeartbeatInterval)
	}
	if c.RaftHeartbeatTimeout <= 0 || c.RaftElectionTimeout <= 0 || c.RaftLeaderLease <= 0 {
		return errors.New("raft timeouts must be positive")
	}
	if c.RaftLeaderLease > c.RaftHeartbeatTimeout {
		return fmt.Errorf("raft leader lease %s must not exceed the raft heartbeat timeout %s", c.RaftLeaderLease, c.RaftHeartbeatTimeout)
	}
	roots, err := absRoots(c.FileRoots)
	if err != nil {
		return err
	}
	c.FileRoots = roots
	return nil
}
