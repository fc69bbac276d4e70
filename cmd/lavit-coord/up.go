package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/coordinator"
	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/datadir"
)

func env(name string) []string { return []string{"LAVIT_" + name} }

func upCommand() *cli.Command {
	d := coordinator.DefaultConfig()
	host, _ := os.Hostname()
	return &cli.Command{
		Name:  "up",
		Usage: "start a coordinator node (with no flags: a one-node cluster in ./lavit-data)",
		Flags: append(append(cliutil.LogFlags(), cliutil.TokenFlags(env, "cluster's admin token (to --join a cluster or bootstrap --peers; default: generated at bootstrap and saved in the data dir)")...),
			&cli.StringFlag{Name: "id", Value: host, Usage: "stable node id", EnvVars: env("ID")},
			&cli.StringFlag{Name: "data-dir", Value: d.DataDir, Usage: "raft log, snapshots, join token, embedded NATS store", EnvVars: env("DATA_DIR")},
			&cli.StringFlag{Name: "raft-addr", Value: d.RaftAddr, Usage: "raft transport bind address", EnvVars: env("RAFT_ADDR")},
			&cli.StringFlag{Name: "raft-advertise", Usage: "raft address peers dial (default: --raft-addr)", EnvVars: env("RAFT_ADVERTISE")},
			&cli.StringFlag{Name: "nats-addr", Value: d.NATSAddr, Usage: "embedded NATS client listener", EnvVars: env("NATS_ADDR")},
			&cli.StringFlag{Name: "nats-cluster-addr", Value: d.NATSClusterAddr, Usage: "embedded NATS route listener (between coordinators)", EnvVars: env("NATS_CLUSTER_ADDR")},
			&cli.StringSliceFlag{Name: "nats-routes", Usage: "nats-route://host:port of other coordinators (joining nodes learn them automatically)", EnvVars: env("NATS_ROUTES")},
			&cli.StringFlag{Name: "http-addr", Value: d.HTTPAddr, Usage: "HTTP API, health and status", EnvVars: env("HTTP_ADDR")},
			&cli.StringFlag{Name: "join", Usage: "HTTP address of any member: join that cluster", EnvVars: env("JOIN")},
			&cli.StringSliceFlag{Name: "peers", Usage: "fixed initial cluster, id=raft-host:port for every node including this one (all nodes get the same list)", EnvVars: env("PEERS")},
			&cli.BoolFlag{Name: "no-bootstrap", Usage: "start without state and wait to be added with `lavit-coord raft join`", EnvVars: env("NO_BOOTSTRAP")},
			&cli.StringFlag{Name: "nats-url", Usage: "use this NATS instead of the embedded one", EnvVars: env("NATS_URL")},
			&cli.BoolFlag{Name: "plaintext-nats", Usage: "serve NATS clients without TLS (routes keep it): only where the network encrypts for you (a service mesh); tokens travel in clear, clients need --plaintext-nats", EnvVars: env("PLAINTEXT_NATS")},
			&cli.StringSliceFlag{Name: "file-root", Usage: "a directory runs' file:// locations may lie under (repeatable; default: the directory lavit-coord starts in); anything else, or a symbolic link out, is refused at submit", EnvVars: env("FILE_ROOT")},
			&cli.DurationFlag{Name: "worker-timeout", Value: d.WorkerTimeout, Usage: "mark a worker LOST after this long without heartbeats", EnvVars: env("WORKER_TIMEOUT")},
			&cli.DurationFlag{Name: "heartbeat-interval", Value: d.HeartbeatInterval, Usage: "heartbeat interval workers are asked to use", EnvVars: env("HEARTBEAT_INTERVAL")},
			&cli.DurationFlag{Name: "raft-heartbeat-timeout", Value: d.RaftHeartbeatTimeout, Usage: "raft follower heartbeat timeout (failover speed vs. false elections)", EnvVars: env("RAFT_HEARTBEAT_TIMEOUT")},
			&cli.DurationFlag{Name: "raft-election-timeout", Value: d.RaftElectionTimeout, Usage: "raft candidate election timeout", EnvVars: env("RAFT_ELECTION_TIMEOUT")},
			&cli.DurationFlag{Name: "raft-leader-lease", Value: d.RaftLeaderLease, Usage: "raft leader lease timeout", EnvVars: env("RAFT_LEADER_LEASE")},
		),
		Action: runUp,
	}
}

func runUp(c *cli.Context) error {
	if c.NArg() > 0 {
		return cliutil.Usagef("up takes no arguments (got %q)", c.Args().Slice())
	}
	if c.IsSet("nats-url") && (c.IsSet("nats-addr") || c.IsSet("nats-cluster-addr")) {
		return cliutil.Usagef("--nats-url contradicts --nats-addr/--nats-cluster-addr: with --nats-url no embedded NATS server runs")
	}
	if c.Bool("no-bootstrap") && (c.IsSet("join") || c.IsSet("peers")) {
		return cliutil.Usagef("--no-bootstrap contradicts --join/--peers")
	}
	log, err := cliutil.Logger(c)
	if err != nil {
		return err
	}
	cfg := coordinator.DefaultConfig()
	cfg.NodeID = c.String("id")
	cfg.DataDir = c.String("data-dir")
	cfg.RaftAddr = c.String("raft-addr")
	cfg.RaftAdvertise = c.String("raft-advertise")
	cfg.NATSAddr = c.String("nats-addr")
	cfg.NATSClusterAddr = c.String("nats-cluster-addr")
	cfg.NATSRoutes = c.StringSlice("nats-routes")
	cfg.HTTPAddr = c.String("http-addr")
	cfg.Join = c.String("join")
	cfg.Peers = c.StringSlice("peers")
	cfg.NoBootstrap = c.Bool("no-bootstrap")
	cfg.NATSURL = c.String("nats-url")
	cfg.PlaintextNATS = c.Bool("plaintext-nats")
	if cfg.Token, _, err = cliutil.FlagToken(c); err != nil {
		return err
	}
	if c.IsSet("file-root") {
		cfg.FileRoots = c.StringSlice("file-root")
	}
	cfg.WorkerTimeout = c.Duration("worker-timeout")
	cfg.HeartbeatInterval = c.Duration("heartbeat-interval")
	cfg.RaftHeartbeatTimeout = c.Duration("raft-heartbeat-timeout")
	cfg.RaftElectionTimeout = c.Duration("raft-election-timeout")
	cfg.RaftLeaderLease = c.Duration("raft-leader-lease")
	cfg.Build = version
	cfg.Logger = log
	if err := cfg.Validate(); err != nil {
		return cliutil.UsageError{Err: err}
	}

	// Catch signals before starting, so a SIGTERM during start-up still
	// gets a clean stop.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	srv, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	if srv.TokenGenerated() {
		announceToken(os.Stdout, srv.Token(), datadir.TokenPath(cfg.DataDir))
	}
	fmt.Fprintf(os.Stderr, "lavit-coord %s up: node %s, raft %s, NATS %s, HTTPS https://%s, data %s\n",
		version, cfg.NodeID, srv.RaftAddr(), srv.NATSURL(), srv.HTTPAddr(), cfg.DataDir)
	sig := <-sigs
	log.Info("signal received; shutting down", "signal", sig.String())
	go func() {
		<-sigs
		log.Warn("second signal: exiting now")
		os.Exit(cliutil.ExitError)
	}()
	return srv.Shutdown()
}

// announceToken tells the operator about a newly made admin token: the
// token itself only when out is a terminal (once, to the person who
// started the cluster), never into a log or a pipe; otherwise where it is.
func announceToken(out *os.File, token, path string) {
	if st, err := out.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		fmt.Fprintf(out, "admin token: %s\n(saved in %s, mode 0600; shown once. Give workers their own: lavit-coord token create --role worker)\n", token, path)
		return
	}
	fmt.Fprintf(out, "generated the cluster's admin token; saved in %s (mode 0600). Give workers their own: lavit-coord token create --role worker\n", path)
}
