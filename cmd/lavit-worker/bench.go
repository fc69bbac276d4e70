package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/collective"
	"github.com/lavit-org/lavit/collective/nccl"
	"github.com/lavit-org/lavit/collective/ring"
	"github.com/lavit-org/lavit/internal/cliutil"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure this machine",
		Subcommands: []*cli.Command{{
			Name:  "allreduce",
			Usage: "time an all-reduce over an in-process world of ranks (ring: loopback TCP; nccl: one GPU per rank)",
			Description: "Reports nccl-tests metrics: algbw = bytes/time, busbw = algbw·2(n−1)/n, GB = 1e9.\n" +
				"The ring backend also times a transfer-only ring (same bytes, no adds), the limit\n" +
				"this machine's loopback sets, interleaved with the all-reduce, and the fraction of it reached.",
			Flags: append(cliutil.LogFlags(),
				&cli.IntFlag{Name: "world", Value: 2, Usage: "number of ranks"},
				&cli.StringFlag{Name: "size", Value: "64MiB", Usage: "buffer size in bytes, or with a KiB, MiB or GiB suffix"},
				&cli.StringFlag{Name: "sizes", Usage: "several sizes instead of --size: LO..HI doubles from LO to HI (1KiB..256MiB), or a comma list"},
				&cli.StringFlag{Name: "backend", Value: "ring", Usage: "ring or nccl"},
				&cli.IntFlag{Name: "iters", Value: 10, Usage: "timed iterations per size (the median is reported)"},
				&cli.IntFlag{Name: "warmup", Value: 2, Usage: "untimed iterations per size"},
				&cli.StringFlag{Name: "nccl-lib", Usage: "path to libnccl.so.2 (default: the dynamic loader's search)", EnvVars: env("NCCL_LIB")},
				&cli.BoolFlag{Name: "json", Usage: "print the rows as a JSON array"},
			),
			Action: runBenchAllReduce,
		}},
	}
}

func runBenchAllReduce(c *cli.Context) error {
	if c.NArg() > 0 {
		return cliutil.Usagef("bench allreduce takes no arguments (got %q)", c.Args().Slice())
	}
	if _, err := cliutil.Logger(c); err != nil {
		return err
	}
	sizes, err := benchSizes(c)
	if err != nil {
		return err
	}
	world, iters, warmup := c.Int("world"), c.Int("iters"), c.Int("warmup")
	switch {
	case world < 1:
		return cliutil.Usagef("--world %d: want at least 1", world)
	case iters < 1:
		return cliutil.Usagef("--iters %d: want at least 1", iters)
	case warmup < 0:
		return cliutil.Usagef("--warmup %d: want 0 or more", warmup)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var rows []collective.BenchRow
	switch backend := c.String("backend"); backend {
	case "ring":
		fmt.Fprintf(os.Stderr, "ring all-reduce: %d ranks as goroutines of one process on loopback TCP, GOMAXPROCS=%d\n", world, runtime.GOMAXPROCS(0))
		for _, size := range sizes {
			ar, limit, err := ring.BenchWithLimit(ctx, world, size, warmup, iters)
			if err != nil {
				return fmt.Errorf("%s at world %d: %w", collective.FormatSize(size), world, err)
			}
			rows = append(rows, ar, limit)
		}
	case "nccl":
		lib, err := nccl.Load(c.String("nccl-lib"))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "nccl all-reduce: NCCL %s, %d ranks on GPUs 0..%d of this process\n", nccl.VersionString(lib.Version()), world, world-1)
		for _, size := range sizes {
			row, err := nccl.Bench(ctx, lib, world, size, warmup, iters)
			if err != nil {
				return fmt.Errorf("%s at world %d: %w", collective.FormatSize(size), world, err)
			}
			rows = append(rows, row)
		}
	default:
		return cliutil.Usagef("--backend %q: want ring or nccl", backend)
	}

	if c.Bool("json") {
		return cliutil.PrintJSON(os.Stdout, rows)
	}
	table := make([][]string, 0, len(rows))
	for _, r := range rows {
		op, of := r.Op, "-"
		if r.Op == "transfer_only" {
			op = "limit"
		}
		if r.OfLimit > 0 {
			of = fmt.Sprintf("%.0f%%", 100*r.OfLimit)
		}
		table = append(table, []string{collective.FormatSize(r.SizeBytes), fmt.Sprint(r.World), r.Backend, op,
			fmt.Sprintf("%.3f", r.TimeMs), fmt.Sprintf("%.3f", r.P10Ms), fmt.Sprintf("%.3f", r.P90Ms),
			fmt.Sprintf("%.3f", r.AlgbwGBps), fmt.Sprintf("%.3f", r.BusbwGBps), of})
	}
	return cliutil.Table(os.Stdout, []string{"SIZE", "WORLD", "BACKEND", "OP", "TIME_MS", "P10_MS", "P90_MS", "ALGBW_GB/S", "BUSBW_GB/S", "OF_LIMIT"}, table)
}

// benchSizes reads --size or --sizes.
func benchSizes(c *cli.Context) ([]int64, error) {
	if c.IsSet("sizes") {
		if c.IsSet("size") {
			return nil, cliutil.Usagef("give --size or --sizes, not both")
		}
		sizes, err := collective.ParseSizes(c.String("sizes"))
		if err != nil {
			return nil, cliutil.Usagef("--sizes: %v", err)
		}
		for _, s := range sizes {
			if s < 4 {
				return nil, cliutil.Usagef("--sizes: %d bytes is less than one float32", s)
			}
		}
		return sizes, nil
	}
	size, err := collective.ParseSize(c.String("size"))
	if err != nil {
		return nil, cliutil.Usagef("--size: %v", err)
	}
	if size < 4 {
		return nil, cliutil.Usagef("--size: %d bytes is less than one float32", size)
	}
	return []int64{size}, nil
}
