package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
)

func shardsCommand() *cli.Command {
	return &cli.Command{
		Name:  "shards",
		Usage: "WebDataset data sets: make, index and verify them (file:///abs/dir or s3://bucket/prefix)",
		Subcommands: []*cli.Command{
			{
				Name:  "synth",
				Usage: "write MODEL.md's synthetic data set as shards",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Required: true, Usage: "data set URL"},
					&cli.IntFlag{Name: "samples", Required: true, Usage: "number of samples"},
					&cli.IntFlag{Name: "per-shard", Value: 1000, Usage: "samples per shard"},
					&cli.Int64Flag{Name: "shard-bytes", Usage: "also end a shard once it holds this many bytes (0 = by count only)"},
					&cli.Uint64Flag{Name: "seed", Value: 0, Usage: "data seed"},
					&cli.StringFlag{Name: "split", Value: "train", Usage: "train or eval"},
					&cli.BoolFlag{Name: "no-index", Usage: "do not write manifest.json"},
				},
				Action: runShardsSynth,
			},
			{
				Name:      "pack",
				Usage:     "pack a directory of image + caption pairs (NAME.jpg|jpeg|png|webp + NAME.txt, and NAME.json if there) into shards",
				ArgsUsage: "DIR (flags go before it)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Required: true, Usage: "data set URL"},
					&cli.IntFlag{Name: "per-shard", Value: 1000, Usage: "samples per shard"},
					&cli.StringFlag{Name: "prefix", Value: "data", Usage: "shard name prefix"},
				},
				Action: runShardsPack,
			},
			{
				Name:      "index",
				Usage:     "scan the shards once and write manifest.json next to them",
				ArgsUsage: "URL",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the manifest"}},
				Action:    runShardsIndex,
			},
			{
				Name:      "verify",
				Usage:     "re-read every shard against the manifest; report bad samples by shard and key (exit 1 if any)",
				ArgsUsage: "URL",
				Action:    runShardsVerify,
			},
		},
	}
}

// progress prints a one-line progress bar to stderr.
func progress(what string, done, total int, detail string) {
	const width = 30
	filled := width * done / max(total, 1)
	fmt.Fprintf(os.Stderr, "\r%s [%s%s] %d/%d %s", what, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, total, detail)
	if done == total {
		fmt.Fprintln(os.Stderr)
	}
}

// openURLArg opens the data set named by the command's one argument.
func openURLArg(c *cli.Context) (objstore.Source, error) {
	if c.NArg() != 1 {
		return nil, cliutil.Usagef("%s needs one data set URL (file:///abs/dir or s3://bucket/prefix)", c.Command.FullName())
	}
	src, err := objstore.Open(c.Context, c.Args().First())
	if err != nil {
		return nil, cliutil.UsageError{Err: err}
	}
	return src, nil
}

func runShardsSynth(c *cli.Context) error {
	var split synth.Split
	switch c.String("split") {
	case "train":
		split = synth.Train
	case "eval":
		split = synth.Eval
	default:
		return cliutil.Usagef("--split %q: want train or eval", c.String("split"))
	}
	if c.Int("samples") <= 0 || c.Int("per-shard") <= 0 {
		return cliutil.Usagef("--samples and --per-shard must be positive")
	}
	src, err := openOut(c)
	if err != nil {
		return err
	}
	start := time.Now()
	names, err := shards.WriteSynthSized(c.Context, src, c.Uint64("seed"), split, c.Int("samples"), c.Int("per-shard"), c.Int64("shard-bytes"), func(done, total int) {
		progress("synth", done, total, "samples")
	})
	if err != nil {
		return err
	}
	fmt.Printf("wrote %d %s samples in %d shards to %s (%s)\n", c.Int("samples"), split, len(names), src.URL(), time.Since(start).Round(time.Millisecond))
	if c.Bool("no-index") {
		return nil
	}
	return indexAndWrite(c, src, names, false)
}

func openOut(c *cli.Context) (objstore.Source, error) {
	src, err := objstore.OpenForWrite(c.Context, c.String("out"))
	if err != nil {
		return nil, cliutil.UsageError{Err: err}
	}
	return src, nil
}

func runShardsPack(c *cli.Context) error {
	if c.NArg() != 1 {
		return cliutil.Usagef("shards pack needs one directory")
	}
	pairs, skipped, err := shards.FindPairs(c.Args().First())
	if err != nil {
		return err
	}
	for _, why := range skipped {
		fmt.Fprintf(os.Stderr, "skipped %s\n", why)
	}
	if len(pairs) == 0 {
		return fmt.Errorf("no image + caption pairs in %s", c.Args().First())
	}
	src, err := openOut(c)
	if err != nil {
		return err
	}
	names, err := shards.Pack(c.Context, src, pairs, c.String("prefix"), c.Int("per-shard"), func(done, total int) {
		progress("pack", done, total, "")
	})
	if err != nil {
		return err
	}
	fmt.Printf("packed %d samples (%d skipped) into %d shards at %s\n", len(pairs), len(skipped), len(names), src.URL())
	return indexAndWrite(c, src, names, false)
}

func runShardsIndex(c *cli.Context) error {
	src, err := openURLArg(c)
	if err != nil {
		return err
	}
	return indexAndWrite(c, src, nil, c.Bool("json"))
}

func indexAndWrite(c *cli.Context, src objstore.Source, names []string, asJSON bool) error {
	m, err := shards.Index(c.Context, src, names, wds.DefaultLimits(), func(done, total int, e shards.ShardEntry) {
		progress("index", done, total, e.Name)
	})
	if err != nil {
		return err
	}
	if err := shards.WriteManifest(c.Context, src, m); err != nil {
		return err
	}
	if asJSON {
		return cliutil.PrintJSON(os.Stdout, m)
	}
	bad := 0
	for _, s := range m.Shards {
		bad += s.Bad
	}
	fmt.Printf("indexed %d shards, %d samples (%d bad) → %s/%s, manifest %s\n", len(m.Shards), m.Samples(), bad, src.URL(), shards.ManifestName, m.Hash()[:16])
	return nil
}

func runShardsVerify(c *cli.Context) error {
	src, err := openURLArg(c)
	if err != nil {
		return err
	}
	m, err := shards.LoadManifest(c.Context, src)
	if err != nil {
		return err
	}
	var problems []string
	samples, bad := 0, 0
	for i, e := range m.Shards {
		err := verifyShard(c, src, e, func(s wds.Sample) {
			samples++
			if err := shards.CheckSample(s); err != nil {
				bad++
				problems = append(problems, fmt.Sprintf("%s: sample %d (%s): %v", e.Name, s.Index, s.Key, err))
			}
		})
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", e.Name, err))
		}
		progress("verify", i+1, len(m.Shards), e.Name)
	}
	for _, p := range problems {
		fmt.Println(p)
	}
	fmt.Printf("verified %d shards, %d samples: %d bad samples, %d problems\n", len(m.Shards), samples, bad, len(problems))
	if len(problems) > 0 {
		return errors.New("the data set has problems (listed above)")
	}
	return nil
}

func verifyShard(c *cli.Context, src objstore.Source, e shards.ShardEntry, each func(wds.Sample)) error {
	rc, err := src.Open(c.Context, e.Name, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	vr := shards.NewStrictVerifiedReader(bufio.NewReaderSize(rc, 1<<20), e)
	if _, err := wds.Scan(vr, e.Name, wds.DefaultLimits(), func(s wds.Sample) error { each(s); return nil }); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, vr) // the tail, so the hash covers every byte
	return err
}
