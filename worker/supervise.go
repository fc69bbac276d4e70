package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/lavit-org/lavit/internal/retry"
)

// One worker per GPU: `lavit-worker join --device all` runs no agent of its
// own; it starts one `lavit-worker join --device cuda:N` child per GPU the
// host has, restarts a child that exits, and stops them all when it is
// stopped (the role torchrun's local agent plays). Each child is an
// ordinary worker with its own id, process, CUDA context and NCCL rank, so
// NCCL sees the node's topology and a crash takes one GPU out, not the node.

// Child is one worker process the supervisor keeps running.
type Child struct {
	Name string   // for logs: the child's worker id
	Args []string // the command line (Args[0] is the program)
}

// SuperviseConfig configures Supervise.
type SuperviseConfig struct {
	Children []Child
	// Restart is the backoff between restarts of a child that keeps
	// exiting; a child that ran for longer than StableAfter starts again
	// from the first wait.
	Restart     retry.Backoff
	StableAfter time.Duration
	// StopGrace is how long children get to stop after SIGTERM before they
	// are killed.
	StopGrace time.Duration
	Logger    *slog.Logger
}

// DefaultSuperviseConfig returns the supervisor's defaults for children.
func DefaultSuperviseConfig(children []Child) SuperviseConfig {
	return SuperviseConfig{
		Children:    children,
		Restart:     retry.Backoff{Initial: time.Second, Max: 30 * time.Second, Jitter: 0.5},
		StableAfter: time.Minute,
		StopGrace:   45 * time.Second, // a child's own job stop waits 30 s
	}
}

// Supervise runs the children until ctx ends, then stops them (SIGTERM,
// then SIGKILL after the grace) and returns once all have exited.
func Supervise(ctx context.Context, cfg SuperviseConfig) error {
	if len(cfg.Children) == 0 {
		return fmt.Errorf("no devices to start workers for")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	for _, ch := range cfg.Children {
		wg.Go(func() { superviseChild(ctx, cfg, ch, log.With("child", ch.Name)) })
	}
	wg.Wait()
	log.Info("every worker stopped")
	return nil
}

// superviseChild keeps one child running until ctx ends.
func superviseChild(ctx context.Context, cfg SuperviseConfig, ch Child, log *slog.Logger) {
	waits := cfg.Restart.Waits()
	for ctx.Err() == nil {
		cmd := exec.Command(ch.Args[0], ch.Args[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // never outlive the supervisor
		began := time.Now()
		if err := cmd.Start(); err != nil {
			log.Error("worker did not start", "err", err)
		} else {
			log.Info("worker started", "pid", cmd.Process.Pid)
			err := waitOrStop(ctx, cmd, cfg.StopGrace)
			if ctx.Err() != nil {
				log.Info("worker stopped", "pid", cmd.Process.Pid, "exit", exitCode(err))
				return
			}
			log.Warn("worker exited; restarting it", "pid", cmd.Process.Pid, "exit", exitCode(err), "ran", time.Since(began).Round(time.Millisecond))
		}
		if time.Since(began) > cfg.StableAfter {
			waits = cfg.Restart.Waits()
		}
		if retry.Sleep(ctx, waits.Next()) != nil {
			return
		}
	}
}

// waitOrStop waits for cmd to exit; when ctx ends first it sends SIGTERM,
// and SIGKILL after grace.
func waitOrStop(ctx context.Context, cmd *exec.Cmd, grace time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		cmd.Process.Kill()
		return <-done
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
