package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
				Usage:     "download every part of a committed checkpoint and check its checksums (exit 1 if any is missing or corrupt)",
				ArgsUsage: "RUN STEP",
				Flags:     clientFlags(true),
				Action: func(c *cli.Context) error {
					began := time.Now()
					k, m, state, err := fetchCkpt(c, "")
					if err != nil {
						return err
					}
					if _, err := checkpoint.ParseState(state, checkpoint.StateFormat); err != nil {
						return fmt.Errorf("%s: %w: %v", k.URL, checkpoint.ErrCorrupt, err)
					}
					fmt.Printf("checkpoint %s step %d: %d parts, %d bytes, sha256 %s: OK (%s)\n", m.Run, m.Step, len(m.Parts), m.StateBytes, short(m.StateSHA256), time.Since(began).Round(time.Millisecond))
					return nil
				},
			},
			{
				Name:      "export",
				Usage:     "write a checkpoint's model weights as safetensors (the names and shapes the model defines)",
				ArgsUsage: "RUN STEP",
				Flags:     append(clientFlags(false), &cli.StringFlag{Name: "out", Usage: "the .safetensors file to write (required)"}),
				Action: func(c *cli.Context) error {
					_, m, state, err := fetchCkpt(c, "out")
					if err != nil {
						return err
					}
					out := c.String("out")
					tmp, err := os.CreateTemp(filepath.Dir(out), ".export-*")
					if err != nil {
						return err
					}
					defer os.Remove(tmp.Name())
					if err := checkpoint.ExportSafetensors(tmp, state, checkpoint.StateFormat, m.Params); err != nil {
						tmp.Close()
						return err
					}
					if err := tmp.Close(); err != nil {
						return err
					}
					if err := os.Rename(tmp.Name(), out); err != nil {
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

// fetchCkpt resolves RUN STEP, downloads the checkpoint and verifies every
// part; needFlag names a flag that must be set (checked after flags given
// after the arguments are applied).
func fetchCkpt(c *cli.Context, needFlag string) (wire.CheckpointInfo, *checkpoint.Manifest, []byte, error) {
	k, err := findCkpt(c)
	if err != nil {
		return k, nil, nil, err
	}
	if needFlag != "" && c.String(needFlag) == "" {
		return k, nil, nil, cliutil.Usagef("%s needs --%s", c.Command.FullName(), needFlag)
	}
	m, err := checkpoint.ReadManifest(c.Context, k.URL)
	if err != nil {
		return k, nil, nil, err
	}
	state, err := checkpoint.Fetch(c.Context, k.URL, m)
	return k, m, state, err
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
