package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/wire"
)

func ckptCommand() *cli.Command {
	return &cli.Command{
		Name:  "ckpt",
		Usage: "a run's committed checkpoints: list, verify, export",
		Subcommands: []*cli.Command{
			{
				Name:      "ls",
				Usage:     "list a run's committed checkpoints, oldest first",
				ArgsUsage: "RUN",
				Flags:     clientFlags(true),
				Action: func(c *cli.Context) error {
					list, err := listCkpts(c)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return cliutil.PrintJSON(os.Stdout, list)
					}
					rows := make([][]string, 0, len(list))
					for _, k := range list {
						rows = append(rows, []string{fmt.Sprint(k.Step), fmt.Sprint(k.World), fmt.Sprint(k.Generation), fmt.Sprint(k.StateBytes), short(k.StateSHA256), cliutil.Ago(k.Time, time.Now()), k.URL})
					}
					return cliutil.Table(os.Stdout, []string{"STEP", "WORLD", "GENERATION", "BYTES", "SHA256", "COMMITTED", "URL"}, rows)
				},
			},
			{
				Name:      "verify",
				Usage:     "download every part of a committed checkpoint and check its checksums and its manifest against raft's (exit 1 if any is missing, corrupt or not the committed one)",
				ArgsUsage: "RUN STEP",
				Flags:     append(clientFlags(true), sha256Flag),
				Action: func(c *cli.Context) error {
					began := time.Now()
					k, err := resolveCkpt(c, "")
					if err != nil {
						return err
					}
					want, err := committedCkpt(c, k)
					if err != nil {
						return err
					}
					m, err := verifyCkpt(c.Context, k.URL, want)
					if err != nil {
						return err
					}
					fmt.Printf("checkpoint %s step %d: %d parts, %d bytes, sha256 %s: OK (%s)\n", m.Run, m.Step, len(m.Parts), m.StateBytes, short(m.StateSHA256), time.Since(began).Round(time.Millisecond))
					return nil
				},
			},
			{
				Name:      "export",
				Usage:     "write a checkpoint's model weights as safetensors (the names and shapes the model defines)",
				ArgsUsage: "RUN STEP",
				Flags:     append(clientFlags(false), &cli.StringFlag{Name: "out", Usage: "the .safetensors file to write (required)"}, sha256Flag),
				Action: func(c *cli.Context) error {
					k, err := resolveCkpt(c, "out")
					if err != nil {
						return err
					}
					want, err := committedCkpt(c, k)
					if err != nil {
						return err
					}
					out := c.String("out")
					m, err := exportCkpt(c.Context, k.URL, want, out)
					if err != nil {
						return err
					}
					fmt.Printf("wrote %s: %d tensors from run %s step %d\n", out, len(m.Params), m.Run, m.Step)
					return nil
				},
			},
		},
	}
}

func listCkpts(c *cli.Context) ([]wire.CheckpointInfo, error) {
	id, err := oneArg(c, "run id")
	if err != nil {
		return nil, err
	}
	return runCkpts(c, id)
}

// runCkpts asks the cluster for a run's committed checkpoints.
func runCkpts(c *cli.Context, run string) ([]wire.CheckpointInfo, error) {
	reply, err := callCluster(c, wire.ListCheckpoints, &wire.RunRequest{ID: run})
	if err != nil {
		return nil, err
	}
	return reply.Checkpoints, nil
}

// resolveCkpt resolves RUN STEP to a committed checkpoint; needFlag names
// a flag that must be set (checked after flags given after the arguments
// are applied).
func resolveCkpt(c *cli.Context, needFlag string) (wire.CheckpointInfo, error) {
	k, err := findCkpt(c)
	if err != nil {
		return k, err
	}
	if needFlag != "" && c.String(needFlag) == "" {
		return k, cliutil.Usagef("%s needs --%s", c.Command.FullName(), needFlag)
	}
	return k, nil
}

// sha256Flag names the manifest a checkpoint must have, for checkpoints
// committed before raft recorded it, or to pin one.
var sha256Flag = &cli.StringFlag{Name: "sha256", Usage: "the sha256 the checkpoint's manifest.json must have (default: the one raft committed)"}

// committedCkpt is what the checkpoint's manifest must match: what raft
// committed for it, and the --sha256 flag when given (which must then
// agree with raft's).
func committedCkpt(c *cli.Context, k wire.CheckpointInfo) (checkpoint.Committed, error) {
	want := checkpoint.Committed{Step: k.Step, ManifestSHA256: k.ManifestSHA256, StateSHA256: k.StateSHA256}
	flag := strings.ToLower(c.String("sha256"))
	if flag == "" {
		return want, nil
	}
	if _, err := hex.DecodeString(flag); err != nil || len(flag) != 64 {
		return want, cliutil.Usagef("--sha256 %q is not a sha256 (64 hex digits)", c.String("sha256"))
	}
	if want.ManifestSHA256 != "" && want.ManifestSHA256 != flag {
		return want, fmt.Errorf("checkpoint at step %d: --sha256 %s, raft committed the manifest's sha256 as %s", k.Step, flag, want.ManifestSHA256)
	}
	want.ManifestSHA256 = flag
	return want, nil
}

// verifyCkpt downloads the checkpoint in dir and verifies its manifest
// against what raft committed, every part and the state inside them
// (checkpoint.LoadCommitted, ParseState).
func verifyCkpt(ctx context.Context, dir string, want checkpoint.Committed) (*checkpoint.Manifest, error) {
	m, state, err := checkpoint.LoadCommitted(ctx, dir, want)
	if err != nil {
		return nil, err
	}
	if _, err := checkpoint.ParseState(state, checkpoint.StateFormat); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", dir, checkpoint.ErrCorrupt, err)
	}
	return m, nil
}

// exportCkpt writes the model weights of the checkpoint in dir to out as
// safetensors (through a temporary file renamed into place: out is
// written whole or not at all). The manifest (against what raft
// committed), the parts and the state are all verified first; a
// parameter table that does not fit the state is an error, and out is
// left as it was.
func exportCkpt(ctx context.Context, dir string, want checkpoint.Committed, out string) (*checkpoint.Manifest, error) {
	m, state, err := checkpoint.LoadCommitted(ctx, dir, want)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".export-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if err := checkpoint.ExportSafetensors(tmp, state, checkpoint.StateFormat, m.Params); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return nil, err
	}
	return m, nil
}

// findCkpt resolves RUN STEP to a committed checkpoint.
func findCkpt(c *cli.Context) (wire.CheckpointInfo, error) {
	args, err := cliutil.Args(c)
	if err != nil {
		return wire.CheckpointInfo{}, err
	}
	if len(args) != 2 {
		return wire.CheckpointInfo{}, cliutil.Usagef("%s takes RUN STEP (got %d arguments)", c.Command.FullName(), len(args))
	}
	step, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return wire.CheckpointInfo{}, cliutil.Usagef("STEP %q is not a number", args[1])
	}
	list, err := runCkpts(c, args[0])
	if err != nil {
		return wire.CheckpointInfo{}, err
	}
	var steps []int64
	for _, k := range list {
		if k.Step == step {
			return k, nil
		}
		steps = append(steps, k.Step)
	}
	return wire.CheckpointInfo{}, fmt.Errorf("run %s has no committed checkpoint at step %d (committed: %v)", args[0], step, steps)
}
