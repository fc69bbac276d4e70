package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/memplan"
	"github.com/lavit-org/lavit/internal/runspec"
)

// defaultDeviceMemory is run plan's --device-memory: an 80 GB GPU.
const defaultDeviceMemory = "80GiB"

func planCommand() *cli.Command {
	return &cli.Command{
		Name:  "plan",
		Usage: "the memory one rank of a run spec needs, part by part, and whether it fits (offline)",
		Description: "Plans the spec as run submit would send it (-f FILE, --set key=value), without a coordinator:\n" +
			"parameters, gradients, optimizer state, frozen weights, the stage-2 tokenizer, an activation estimate\n" +
			"and the CUDA reserve per rank, at --workers (default min_workers: the least sharding), against\n" +
			"--device-memory (80GiB, 80GB, 81920MiB or bytes). When it does not fit it lists the settings that\n" +
			"would. Exit status: 1 when it does not fit; with --json always 0 (read \"fits\"), JSON\n" +
			"{\"per_rank_bytes\", \"device_bytes\", \"fits\", \"parts\", \"workers\", \"zero\", \"micro_batch\", \"kind\",\n" +
			"\"tokenizer\", \"precision\", \"reduce_dtype\", \"fixes\": [{\"sets\", \"per_rank_bytes\"}]}. run submit refuses a run\n" +
			"that does not fit the smallest worker's reported memory.",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the run spec (YAML), e.g. configs/stage2-llama2-7b.yaml (required)"},
			&cli.StringSliceFlag{Name: "set", Usage: "override a spec key, e.g. --set optim.zero=1 --set micro_batch=2 (repeatable)"},
			&cli.IntFlag{Name: "workers", Usage: "the world size to plan for (default: the spec's min_workers)", EnvVars: env("PLAN_WORKERS")},
			&cli.StringFlag{Name: "device-memory", Value: defaultDeviceMemory, Usage: "one device's memory: 80GiB, 80GB, 81920MiB or bytes", EnvVars: env("DEVICE_MEMORY")},
			&cli.StringFlag{Name: "tokenizer-model", Usage: "stage 2: the frozen tokenizer's model config, a built-in name or a .json path (default: the largest built-in stage-1 model whose codebook fits lm.vocab)", EnvVars: env("TOKENIZER_MODEL")},
			&cli.BoolFlag{Name: "json", Usage: "print JSON for scripts (exit 0 whether or not it fits)"},
		},
		Action: runPlan,
	}
}

// planOutput is run plan --json: the plan and the fixes.
type planOutput struct {
	memplan.Result
	Fixes []memplan.Fix `json:"fixes"`
}

// errDoesNotFit is run plan's failure (exit 1) when the run does not fit.
var errDoesNotFit = errors.New("the run does not fit in device memory")

func runPlan(c *cli.Context) error {
	spec, err := loadSpec(c)
	if err != nil {
		return err
	}
	mem, err := cliutil.ParseSize(c.String("device-memory"))
	if err != nil {
		return cliutil.Usagef("--device-memory: %v", err)
	}
	workers := spec.MinWorkers
	if c.IsSet("workers") {
		workers = c.Int("workers")
		if workers < 1 {
			return cliutil.Usagef("--workers must be at least 1, got %d", workers)
		}
	}
	in := memplan.Input{Spec: spec, Workers: workers, DeviceBytes: mem}
	tokName := ""
	if name := c.String("tokenizer-model"); name != "" {
		if spec.Stage != 2 {
			return cliutil.Usagef("--tokenizer-model is for stage-2 specs (this is stage %d)", spec.Stage)
		}
		tok, err := memplan.LoadModel(name, os.ReadFile)
		if err != nil {
			return cliutil.Usagef("--tokenizer-model: %v", err)
		}
		if tok.Stage != 1 {
			return cliutil.Usagef("--tokenizer-model %s is a stage-%d model; the tokenizer is a stage-1 model", name, tok.Stage)
		}
		in.Tokenizer, tokName = &tok, name
	}
	plan, err := memplan.Plan(in)
	if err != nil {
		return cliutil.Usagef("%v", err)
	}
	fixes, err := memplan.Fixes(in)
	if err != nil {
		return cliutil.Usagef("%v", err)
	}
	if fixes == nil {
		fixes = []memplan.Fix{}
	}
	if c.Bool("json") {
		return cliutil.PrintJSON(c.App.Writer, planOutput{Result: plan, Fixes: fixes})
	}
	if err := printPlan(c.App.Writer, c.String("file"), spec.MinWorkers, c.IsSet("workers"), tokName, plan, fixes); err != nil {
		return err
	}
	if !plan.Fits {
		return fmt.Errorf("%w: %s GiB per rank > %s GiB", errDoesNotFit, memplan.GiB(plan.PerRankBytes), memplan.GiB(plan.DeviceBytes))
	}
	return nil
}

// printPlan writes the human plan: what was planned, a table of the parts
// in GiB, the verdict and, when it does not fit, the fixes.
func printPlan(w io.Writer, file string, minWorkers int, workersSet bool, tokName string, p memplan.Result, fixes []memplan.Fix) error {
	world := "min_workers"
	if workersSet {
		world = "--workers"
	}
	fmt.Fprintf(w, "%s: %d workers (%s), optim.zero %d, %d samples per micro-batch, %s, %s\n", file, p.Workers, world, p.Zero, p.MicroBatch, p.Kind, precisionText(p))
	if p.Workers > minWorkers {
		fmt.Fprintf(w, "note: min_workers is %d; the run can train on that few, with more memory per rank\n", minWorkers)
	}
	switch {
	case tokName != "":
		fmt.Fprintf(w, "tokenizer: %s (--tokenizer-model)\n", tokName)
	case p.Tokenizer != "":
		fmt.Fprintf(w, "tokenizer: %s (assumed: the largest built-in stage-1 model that fits lm.vocab; --tokenizer-model to change)\n", p.Tokenizer)
	}
	var rows [][]string
	for _, name := range memplan.PartNames {
		if v, ok := p.Parts[name]; ok {
			rows = append(rows, []string{name, fmt.Sprintf("%.2f", float64(v)/(1<<30))})
		}
	}
	rows = append(rows, []string{"total", fmt.Sprintf("%.2f", float64(p.PerRankBytes)/(1<<30))}, []string{"device", fmt.Sprintf("%.2f", float64(p.DeviceBytes)/(1<<30))})
	if err := cliutil.Table(w, []string{"PER RANK", "GiB"}, rows); err != nil {
		return err
	}
	if p.Fits {
		fmt.Fprintf(w, "fits: %s GiB to spare\n", memplan.GiB(p.DeviceBytes-p.PerRankBytes))
		return nil
	}
	fmt.Fprintf(w, "does not fit: %s GiB over\n", memplan.GiB(p.PerRankBytes-p.DeviceBytes))
	if len(fixes) == 0 {
		fmt.Fprintln(w, "no setting of optim.zero, activation_checkpointing, micro_batch, min_workers (up to max_workers) or precision makes it fit")
		return nil
	}
	fmt.Fprintln(w, "settings that fit (each enough on its own):")
	for _, f := range fixes {
		fmt.Fprintf(w, " ")
		for _, s := range f.Sets {
			fmt.Fprintf(w, " --set %s", s)
		}
		fmt.Fprintf(w, "   (%s GiB per rank)\n", memplan.GiB(f.PerRankBytes))
	}
	return nil
}

// precisionText is the plan's precision for its header: "fp32", or "bf16
// (gradients reduced in fp32)".
func precisionText(p memplan.Result) string {
	if p.Precision == runspec.PrecisionBF16 {
		return fmt.Sprintf("%s (gradients reduced in %s)", p.Precision, p.ReduceDtype)
	}
	return p.Precision
}
