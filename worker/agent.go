// Package worker is the agent that runs on every training host: it joins
// the fleet through the coordinator's control service, heartbeats, and
// reconciles to the desired state each heartbeat reply carries.
package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/clusterca"
	"github.com/lavit-org/lavit/internal/logging"
	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/wire"
)

// Config configures an agent.
type Config struct {
	// Coord is the NATS URL (or comma-separated URLs) of the coordinators.
	Coord string
	Token string
	// PlaintextNATS connects without TLS: only for an external NATS
	// (lavit-coord up --nats-url) that does not speak it.
	PlaintextNATS bool
	// ID is the worker's stable id (default: host name, plus the device
	// when it is a GPU).
	ID     string
	Host   string
	Device string
	// Devices are the devices found on the host.
	Devices []wire.Device
	// HeartbeatInterval is used until the coordinator suggests another.
	HeartbeatInterval time.Duration
	// RequestTimeout bounds one control call (heartbeats: at most two
	// intervals).
	RequestTimeout time.Duration
	// MaxBackoff caps the wait between connection or registration attempts.
	MaxBackoff time.Duration
	Build      string
	Logger     *slog.Logger
	// Executor trains the runs this worker is given (nil: it cannot train,
	// and reports that as the run's failure).
	Executor Executor
}

// DefaultConfig returns the defaults of `lavit-worker join`.
func DefaultConfig() Config {
	return Config{
		Coord:             "nats://127.0.0.1:4222",
		HeartbeatInterval: 500 * time.Millisecond,
		RequestTimeout:    5 * time.Second,
		MaxBackoff:        5 * time.Second,
	}
}

// Validate checks the config.
func (c *Config) Validate() error {
	if err := wire.ValidateID("worker", c.ID); err != nil {
		return fmt.Errorf("--id: %w", err)
	}
	if c.Coord == "" {
		return errors.New("--coord is empty: give the coordinator's NATS URL, e.g. nats://127.0.0.1:4222")
	}
	if c.Token == "" {
		return errors.New("no join token: pass --token or LAVIT_TOKEN (the coordinator printed it and saved it in its data dir as 'token')")
	}
	if c.Host == "" || c.Device == "" {
		return errors.New("host and device must be set")
	}
	if c.HeartbeatInterval <= 0 || c.RequestTimeout <= 0 || c.MaxBackoff <= 0 {
		return errors.New("heartbeat interval, request timeout and max backoff must be positive")
	}
	return nil
}

// ErrFatal wraps refusals that retrying cannot fix (wrong token, id in use).
var ErrFatal = errors.New("worker cannot continue")

// Agent is a running worker agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	instance string

	mu        sync.Mutex
	desired   wire.DesiredState
	leader    string
	lastReply time.Time
	interval  time.Duration
	seq       uint64

	job     *runningJob // the job running, if any
	lastRun string      // the last (run, generation) started: never started twice
	lastGen uint64
}

// New returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = logging.Discard()
	}
	b := make([]byte, 8)
	rand.Read(b)
	return &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("worker", cfg.ID),
		instance: hex.EncodeToString(b),
		interval: cfg.HeartbeatInterval,
		desired:  wire.DesiredState{State: wire.WorkerIdle},
	}, nil
}

// Desired returns the last desired state the coordinator sent.
func (a *Agent) Desired() wire.DesiredState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.desired
}

// Leader returns the coordinator that answered the last heartbeat.
func (a *Agent) Leader() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.leader
}

// LastReply is when the last heartbeat reply arrived.
func (a *Agent) LastReply() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastReply
}

// Run connects, registers and heartbeats until ctx is cancelled, then
// deregisters. It returns nil after a clean stop, or an error wrapping
// ErrFatal when the coordinator refuses the worker for good.
func (a *Agent) Run(ctx context.Context) error {
	nc, err := a.connect(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer nc.Close()
	client := &wire.Client{NC: nc, Token: a.cfg.Token, From: a.cfg.ID}

	if err := a.register(ctx, client); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	err = a.heartbeatLoop(ctx, client)
	a.stopJob(30 * time.Second)
	a.deregister(client)
	return err
}

// connect dials NATS, retrying with backoff while no coordinator listens.
func (a *Agent) connect(ctx context.Context) (*nats.Conn, error) {
	connect := wire.ConnectOptions
	if a.cfg.PlaintextNATS {
		connect = wire.PlaintextConnectOptions
	}
	opts := append(connect(a.cfg.Token),
		nats.Name("lavit-worker "+a.cfg.ID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond),
		nats.Timeout(a.cfg.RequestTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			a.log.Warn("lost connection to the coordinators' NATS; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			a.log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
	)
	var nc *nats.Conn
	err := retry.Do(ctx, a.backoff(250*time.Millisecond), func(int) error {
		var err error
		nc, err = nats.Connect(a.cfg.Coord, opts...)
		switch {
		case errors.Is(err, nats.ErrAuthorization):
			return retry.Permanent(fmt.Errorf("the coordinators' NATS at %s refused this worker's token (check --token-file / --token / LAVIT_TOKEN; a revoked token stays refused): %w", a.cfg.Coord, err))
		case errors.Is(err, wire.ErrTokenWithoutCA):
			return retry.Permanent(err)
		case errors.Is(err, clusterca.ErrWrongCluster):
			return retry.Permanent(fmt.Errorf("NATS at %s: %w", a.cfg.Coord, err))
		case errors.Is(err, nats.ErrSecureConnWanted):
			return retry.Permanent(fmt.Errorf("the NATS at %s does not speak TLS, and lavit's coordinators always do (for an external NATS without TLS, pass --plaintext-nats): %w", a.cfg.Coord, err))
		}
		return err
	}, func(t retry.Try) {
		a.log.Warn("waiting for a coordinator: cannot reach NATS", "coord", a.cfg.Coord, "attempt", t.Attempt, "retry_in", t.Wait.Round(time.Millisecond), "err", t.Err)
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("connected to NATS", "server", nc.ConnectedUrlRedacted())
	return nc, nil
}

// backoff is the agent's retry backoff: from first, doubling to
// Config.MaxBackoff, half of each wait random.
func (a *Agent) backoff(first time.Duration) retry.Backoff {
	return retry.Backoff{Initial: first, Max: a.cfg.MaxBackoff, Jitter: 0.5}
}

// register announces the worker, retrying while no leader answers.
func (a *Agent) register(ctx context.Context, c *wire.Client) error {
	capacity := 1
	if a.cfg.Executor == nil {
		capacity = 0 // joins the fleet, but is never given a run
	}
	req := &wire.RegisterRequest{
		Instance: a.instance, Host: a.cfg.Host, Devices: a.cfg.Devices,
		Device: a.cfg.Device, Capacity: capacity, Build: a.cfg.Build,
	}
	var reply *wire.RegisterReply
	err := retry.Do(ctx, a.backoff(200*time.Millisecond), func(int) error {
		callCtx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
		defer cancel()
		var err error
		reply, err = wire.Register.Call(callCtx, c, req)
		if isFatal(err) {
			return retry.Permanent(fmt.Errorf("%w: register: %v", ErrFatal, err))
		}
		return err
	}, func(t retry.Try) {
		a.log.Warn("waiting for the coordinator leader to accept registration", "attempt", t.Attempt, "retry_in", t.Wait.Round(time.Millisecond), "err", t.Err)
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	a.mu.Lock()
	a.desired, a.leader, a.lastReply = reply.Desired, reply.Leader, time.Now()
	if iv := time.Duration(reply.HeartbeatInterval); iv > 0 {
		a.interval = iv
	}
	a.mu.Unlock()
	a.log.Info("registered", "leader", reply.Leader, "device", a.cfg.Device, "heartbeat", a.interval)
	return nil
}

// isFatal reports refusals that waiting will not fix.
func isFatal(err error) bool {
	return wire.HasCode(err, wire.CodeAuth) || wire.HasCode(err, wire.CodeConflict) ||
		wire.HasCode(err, wire.CodeBadRequest) || wire.HasCode(err, wire.CodeBadVersion) ||
		wire.HasCode(err, wire.CodeStale)
}

// heartbeatLoop sends a heartbeat every interval and applies the reply. A
// missed reply costs one interval, never correctness: the next reply
// carries the full desired state again.
func (a *Agent) heartbeatLoop(ctx context.Context, c *wire.Client) error {
	failingSince := time.Time{}
	for {
		start := time.Now()
		a.mu.Lock()
		interval := a.interval
		a.seq++
		req := &wire.HeartbeatRequest{Instance: a.instance, Seq: a.seq, State: wire.WorkerIdle}
		if run, gen, ok := a.trainingLocked(); ok {
			req.State, req.Run, req.Generation = wire.WorkerTraining, run, gen
		}
		a.mu.Unlock()

		timeout := min(a.cfg.RequestTimeout, 2*interval)
		callCtx, cancel := context.WithTimeout(ctx, timeout)
		reply, err := wire.Heartbeat.Call(callCtx, c, req)
		cancel()
		switch {
		case err == nil:
			a.mu.Lock()
			if a.leader != reply.Leader && a.leader != "" {
				a.log.Info("heartbeats answered by a new leader", "leader", reply.Leader, "previous", a.leader)
			}
			a.desired, a.leader, a.lastReply = reply.Desired, reply.Leader, time.Now()
			a.mu.Unlock()
			a.reconcile(ctx, c)
			if !failingSince.IsZero() {
				a.log.Info("heartbeats answered again", "after", time.Since(failingSince).Round(time.Millisecond))
				failingSince = time.Time{}
			}
		case ctx.Err() != nil:
			return nil
		case wire.HasCode(err, wire.CodeUnknown):
			// The registry forgot us (removed by an operator, or restored
			// from an old snapshot): register again.
			a.log.Warn("coordinator does not know this worker; registering again")
			if err := a.register(ctx, c); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		case isFatal(err):
			return fmt.Errorf("%w: heartbeat: %v", ErrFatal, err)
		default:
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			a.log.Warn("heartbeat not answered (coordinator electing a leader?)", "failing_for", time.Since(failingSince).Round(time.Millisecond), "err", err)
		}
		if err := retry.Sleep(ctx, max(0, interval-time.Since(start))); err != nil {
			return nil
		}
	}
}

// deregister tells the coordinator this worker leaves on purpose.
func (a *Agent) deregister(c *wire.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.RequestTimeout)
	defer cancel()
	_, err := wire.Deregister.Call(ctx, c, &wire.DeregisterRequest{Instance: a.instance, Reason: "worker shut down"})
	if err != nil {
		a.log.Warn("deregister failed; the coordinator will mark this worker lost after its timeout", "err", err)
		return
	}
	a.log.Info("deregistered")
}
