// Command lavit-worker runs the lavit worker agent on a training host.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/collective/nccl"
	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/datadir"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/trainer"
	"github.com/lavit-org/lavit/worker"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	cliutil.Main(newApp())
}

func env(name string) []string { return []string{"LAVIT_" + name} }

func newApp() *cli.App {
	d := worker.DefaultConfig()
	return &cli.App{
		Name:    "lavit-worker",
		Usage:   "the lavit worker agent: joins a coordinator's fleet and trains what it is given",
		Version: version,
		Commands: []*cli.Command{{
			Name:  "join",
			Usage: "join the fleet and heartbeat until stopped (SIGTERM deregisters)",
			Flags: append(append(cliutil.LogFlags(), cliutil.TokenFlags(env, "token: a worker token from 'lavit-coord token create --role worker', or the admin token")...),
				&cli.StringFlag{Name: "coord", Value: d.Coord, Usage: "NATS URL(s) of the coordinators, comma-separated", EnvVars: env("COORD")},
				&cli.StringFlag{Name: "data-dir", Value: datadir.Default, Usage: "a local coordinator's data dir, to find the admin token when no token is given", EnvVars: env("DATA_DIR")},
				cliutil.FlagPlaintextNATS(env),
				&cli.StringFlag{Name: "id", Usage: "stable worker id (default: host name, plus -cudaN on a GPU)", EnvVars: env("WORKER_ID")},
				&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda:N, auto (first GPU, else CPU), or all (one worker process per GPU, supervised by this one)", EnvVars: env("DEVICE")},
				&cli.StringFlag{Name: "nccl-lib", Usage: "path to libnccl.so.2 for runs with collective.backend nccl (default on a GPU: the loader's search, then PyTorch's pip wheels)", EnvVars: env("NCCL_LIB")},
				&cli.StringFlag{Name: "torch-lib", Usage: "path to the libtorch shim liblavit_torch.so (default: LAVIT_TORCH_LIB, next to this binary, ./bin)", EnvVars: env("TORCH_LIB")},
				&cli.IntFlag{Name: "threads", Usage: "libtorch intra-op threads (default: libtorch's, one per core; with --device all, cores ÷ GPUs each; give cores ÷ workers when several workers share a host)", EnvVars: env("THREADS")},
				&cli.StringFlag{Name: "cpus", Usage: "pin this worker's threads to these CPUs (kernel list format: 0-3,6; default: unpinned; with --device all, an even share of this process's CPUs each)", EnvVars: env("CPUS")},
				&cli.StringFlag{Name: "collective-listen", Usage: "where the ring all-reduce listens (host:port; port 0 picks one; default: a free port on this host's address towards the coordinators)", EnvVars: env("COLLECTIVE_LISTEN")},
				&cli.StringFlag{Name: "collective-advertise", Usage: "host:port peers dial to reach this worker's ring listener (default: this host's address towards the coordinators)", EnvVars: env("COLLECTIVE_ADVERTISE")},
				&cli.DurationFlag{Name: "heartbeat-interval", Value: d.HeartbeatInterval, Usage: "heartbeat interval until the coordinator suggests one", EnvVars: env("HEARTBEAT_INTERVAL")},
				&cli.DurationFlag{Name: "request-timeout", Value: d.RequestTimeout, Usage: "bound on one control call to the coordinators (heartbeats: at most two intervals)", EnvVars: env("REQUEST_TIMEOUT")},
			),
			Action: runJoin,
		}, benchCommand()},
	}
}

func runJoin(c *cli.Context) error {
	if c.NArg() > 0 {
		return cliutil.Usagef("join takes no arguments (got %q)", c.Args().Slice())
	}
	log, err := cliutil.Logger(c)
	if err != nil {
		return err
	}
	cfg := worker.DefaultConfig()
	cfg.Coord = c.String("coord")
	token, from, err := cliutil.ClientToken(c, datadir.ReadToken)
	if err != nil {
		return err
	}
	cfg.Token = token
	cfg.PlaintextNATS = c.Bool("plaintext-nats")
	log.Info("token", "from", from)
	cfg.Host, _ = os.Hostname()
	cfg.Devices = worker.DetectDevices()
	if c.String("device") == "all" {
		return superviseAll(c, cfg.Host, cfg.Devices, log)
	}
	// Pinned before libtorch and NCCL start their threads, which inherit it.
	if list := c.String("cpus"); list != "" {
		cpus, err := worker.ParseCPUList(list)
		if err != nil {
			return cliutil.Usagef("--cpus: %v", err)
		}
		if err := worker.PinProcess(cpus); err != nil {
			return cliutil.Usagef("--cpus %s: %v", list, err)
		}
		log.Info("pinned to CPUs", "cpus", worker.FormatCPUList(cpus))
	}
	if cfg.Device, err = worker.PickDevice(c.String("device"), cfg.Devices); err != nil {
		return cliutil.UsageError{Err: err}
	}
	ncclLib, err := loadNCCL(c.String("nccl-lib"), cfg.Device, log)
	if err != nil {
		return cliutil.Usagef("--nccl-lib: %v", err)
	}
	if ncclLib != nil {
		worker.AddDeviceMemory(cfg.Devices, cfg.Device, ncclLib.DeviceMemory)
	}
	// The libtorch shim is loaded now, so a broken install shows at join
	// time rather than when the first run arrives. Without one the worker
	// still joins the fleet (it cannot train).
	if lib, err := trainer.Load(c.String("torch-lib")); err != nil {
		if c.String("torch-lib") != "" { // a path the user gave must work
			return cliutil.Usagef("--torch-lib: %v", err)
		}
		log.Warn("no libtorch shim: this worker joins but cannot train", "err", err)
	} else {
		bi, _ := lib.BuildInfo()
		log.Info("libtorch shim loaded", "path", lib.Path(), "torch", bi.Torch, "cuda", bi.CUDA)
		if n := c.Int("threads"); n > 0 {
			if err := lib.SetThreads(n); err != nil {
				return cliutil.Usagef("--threads %d: %v", n, err)
			}
		}
		cfg.Executor = &worker.Trainer{Lib: lib, ListenAddr: c.String("collective-listen"), Advertise: c.String("collective-advertise"), NCCL: ncclLib}
	}
	cfg.ID = c.String("id")
	if cfg.ID == "" {
		cfg.ID = worker.DefaultID(cfg.Host, cfg.Device)
	}
	cfg.HeartbeatInterval = c.Duration("heartbeat-interval")
	cfg.RequestTimeout = c.Duration("request-timeout")
	cfg.Build = version
	cfg.Logger = log
	agent, err := worker.New(cfg)
	if err != nil {
		return cliutil.UsageError{Err: err}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "lavit-worker %s: id %s, device %s, coordinator %s\n", version, cfg.ID, cfg.Device, cfg.Coord)
	return agent.Run(ctx)
}

// loadNCCL loads the NCCL library runs with collective.backend nccl use: the
// one --nccl-lib names (it must load: a wrong path is an error at join, not
// a failed run later), else on a GPU the loader's search and then PyTorch's
// pip wheels. A CPU worker without --nccl-lib has none.
func loadNCCL(path, device string, log *slog.Logger) (*nccl.Lib, error) {
	if path != "" {
		lib, err := nccl.Load(path)
		if err != nil {
			return nil, err
		}
		log.Info("NCCL loaded", "path", lib.Path(), "version", nccl.VersionString(lib.Version()))
		return lib, nil
	}
	if !strings.HasPrefix(device, "cuda") {
		return nil, nil
	}
	var tried []string
	for _, cand := range append([]string{nccl.DefaultLibrary}, nccl.WheelCandidates()...) {
		lib, err := nccl.Load(cand)
		if err == nil {
			log.Info("NCCL loaded", "path", lib.Path(), "version", nccl.VersionString(lib.Version()))
			return lib, nil
		}
		tried = append(tried, err.Error())
	}
	log.Warn("no NCCL library: this worker cannot join runs with collective.backend nccl (give --nccl-lib)", "tried", strings.Join(tried, "; "))
	return nil, nil
}

// superviseAll runs one worker process per GPU on this host (--device
// all): the same command line, each child pinned to its device with its
// own id, restarted when it exits, all stopped with this process.
func superviseAll(c *cli.Context, host string, devs []wire.Device, log *slog.Logger) error {
	var children []worker.Child
	var found []string
	for _, d := range devs {
		found = append(found, d.Name)
		if d.Kind != "cuda" {
			continue
		}
		id := worker.DefaultID(host, d.Name)
		if base := c.String("id"); base != "" {
			id = worker.DefaultID(base, d.Name)
		}
		args := append(append([]string{}, os.Args...), "--device", d.Name, "--id", id)
		children = append(children, worker.Child{Name: id, Args: args})
	}
	if !c.IsSet("threads") {
		// The children share this host's cores: an even share each, not
		// libtorch's one thread per core in every child.
		n := worker.ThreadsEach(runtime.NumCPU(), len(children))
		for i := range children {
			children[i].Args = append(children[i].Args, "--threads", strconv.Itoa(n))
		}
	}
	if len(children) == 0 {
		return cliutil.Usagef("--device all: no GPU on this host (found: %s)", strings.Join(found, ", "))
	}
	if !c.IsSet("cpus") && len(children) > 1 {
		// Each child on its own share of the cores, so the kernel does not
		// move their compute threads between them.
		if cpus, err := worker.AllowedCPUs(); err == nil && len(cpus) >= len(children) {
			for i := range children {
				children[i].Args = append(children[i].Args, "--cpus", worker.FormatCPUList(worker.CPUShare(cpus, len(children), i)))
			}
		}
	}
	cfg := worker.DefaultSuperviseConfig(children)
	cfg.Logger = log.With("component", "supervisor")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "lavit-worker %s: one worker per GPU: %d workers\n", version, len(children))
	return worker.Supervise(ctx, cfg)
}
