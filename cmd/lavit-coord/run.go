package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "training runs: submit, plan, list, show, cancel",
		Subcommands: []*cli.Command{
			{
				Name:      "submit",
				Usage:     "submit a run spec (YAML); it starts when enough workers are idle",
				ArgsUsage: " ",
				Flags: append(clientFlags(true),
					&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the run spec (YAML), e.g. configs/tiny-stage1.yaml (required)"},
					&cli.StringSliceFlag{Name: "set", Usage: "override a spec key, e.g. --set steps=100 --set data.url=s3://bucket/train (repeatable)"},
				),
				Action: runSubmit,
			},
			planCommand(),
			{
				Name:  "ls",
				Usage: "list runs, oldest first",
				Flags: clientFlags(true),
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					reply, err := callCluster(c, wire.ListRuns, &wire.RunListRequest{})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return cliutil.PrintJSON(os.Stdout, reply.Runs)
					}
					rows := make([][]string, 0, len(reply.Runs))
					for _, r := range reply.Runs {
						rows = append(rows, []string{r.ID, dash(r.Name), fmt.Sprint(r.Stage), r.State, fmt.Sprint(len(r.Members)), stepOf(r), lossOf(r), cliutil.Ago(r.Created, time.Now())})
					}
					return cliutil.Table(os.Stdout, []string{"ID", "NAME", "STAGE", "STATE", "WORKERS", "STEP", "LOSS", "SUBMITTED"}, rows)
				},
			},
			{
				Name:      "show",
				Usage:     "one run: state, generation, members and ranks, progress, throughput, loss",
				ArgsUsage: "ID",
				Flags:     clientFlags(true),
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "run id")
					if err != nil {
						return err
					}
					info, err := callCluster(c, wire.ShowRun, &wire.RunShowRequest{ID: id})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return cliutil.PrintJSON(os.Stdout, info)
					}
					printRun(os.Stdout, info)
					return nil
				},
			},
			runVerb("checkpoint", "ask a running run for a checkpoint now (taken after its next step)", wire.RequestCheckpoint,
				"checkpoint requested for run %[1]s; see lavit-coord ckpt ls %[1]s\n"),
			runVerb("resume", "resume a failed, cancelled or paused run from its newest committed checkpoint, at any world size", wire.ResumeRun,
				"run %[1]s will resume when enough workers are idle; follow it with: lavit-coord run show %[1]s\n"),
			{
				Name:      "cancel",
				Usage:     "cancel a run; its workers stop and go idle",
				ArgsUsage: "ID",
				Flags:     append(clientFlags(false), &cli.StringFlag{Name: "reason", Usage: "recorded with the run"}),
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "run id")
					if err != nil {
						return err
					}
					if _, err := callCluster(c, wire.CancelRun, &wire.RunCancelRequest{ID: id, Reason: c.String("reason")}); err != nil {
						return err
					}
					fmt.Printf("run %s cancelled\n", id)
					return nil
				},
			},
		},
	}
}

// runVerb is a `run VERB ID` command that sends the run id to ep and
// prints done (a format taking the id).
func runVerb(name, usage string, ep wire.Endpoint[wire.RunRequest, wire.Empty], done string) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "ID",
		Flags:     clientFlags(false),
		Action: func(c *cli.Context) error {
			id, err := oneArg(c, "run id")
			if err != nil {
				return err
			}
			if _, err := callCluster(c, ep, &wire.RunRequest{ID: id}); err != nil {
				return err
			}
			fmt.Printf(done, id)
			return nil
		},
	}
}

// loadSpec reads the spec of -f FILE with its --set overrides, parsed and
// resolved here (so errors name the file and line, and local paths
// resolve against this directory): what run submit sends and run plan
// plans.
func loadSpec(c *cli.Context) (*runspec.Spec, error) {
	name := "run " + c.Command.Name
	if args, err := cliutil.Args(c); err != nil {
		return nil, err
	} else if len(args) > 0 {
		return nil, cliutil.Usagef("%s takes the spec with -f FILE, not arguments (got %q)", name, args)
	}
	path := c.String("file")
	if path == "" {
		return nil, cliutil.Usagef("%s needs -f FILE, the run spec (e.g. configs/tiny-stage1.yaml)", name)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, cliutil.Usagef("%s: %v", name, err)
	}
	spec, err := runspec.Parse(path, data, c.StringSlice("set"))
	if err != nil {
		return nil, cliutil.Usagef("%v", err)
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	if err := spec.Resolve(cwd, os.ReadFile); err != nil {
		return nil, cliutil.Usagef("%v", err)
	}
	return spec, nil
}

// runSubmit loads the spec, checks a local data set is there, and submits
// the self-contained spec.
func runSubmit(c *cli.Context) error {
	spec, err := loadSpec(c)
	if err != nil {
		return err
	}
	if err := checkLocalData(c, spec); err != nil {
		return err
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	reply, err := callCluster(c, wire.SubmitRun, &wire.RunSubmitRequest{Spec: raw})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return cliutil.PrintJSON(os.Stdout, reply)
	}
	fmt.Printf("submitted run %s (stage %d, %d–%d workers); follow it with: lavit-coord run show %s\n", reply.ID, spec.Stage, spec.MinWorkers, spec.MaxWorkers, reply.ID)
	return nil
}

// checkLocalData refuses a file:// data set whose manifest is not there: a
// typo is reported now rather than as a failed run. S3 data sets are
// checked by the workers, which hold the credentials; their failure shows
// in run show.
func checkLocalData(c *cli.Context, spec *runspec.Spec) error {
	for _, u := range []struct{ key, url string }{{"data.url", spec.Data.URL}, {"data.eval_url", spec.Data.EvalURL}} {
		if !strings.HasPrefix(u.url, "file://") {
			continue
		}
		src, err := objstore.Open(c.Context, u.url)
		if err != nil {
			return cliutil.Usagef("%s %s: no usable data set there: %v", u.key, u.url, err)
		}
		if _, err := shards.LoadManifest(c.Context, src); err != nil {
			return cliutil.Usagef("%s %s: no usable data set there: %v (make one with lavit-coord shards synth or shards index)", u.key, u.url, err)
		}
	}
	return nil
}

func oneArg(c *cli.Context, what string) (string, error) {
	args, err := cliutil.Args(c)
	if err != nil {
		return "", err
	}
	if len(args) != 1 {
		return "", cliutil.Usagef("%s takes one argument, the %s (got %d)", c.Command.FullName(), what, len(args))
	}
	return args[0], nil
}

func stepOf(r wire.RunInfo) string {
	if r.TotalSteps > 0 {
		return fmt.Sprintf("%d/%d", r.Step, r.TotalSteps)
	}
	return fmt.Sprint(r.Step)
}

func lossOf(r wire.RunInfo) string {
	if r.Loss == nil {
		return "-"
	}
	return fmt.Sprintf("%.4f", *r.Loss)
}

// progressBar draws done/total as a 30-character bar.
func progressBar(done, total int64) string {
	const width = 30
	if total <= 0 {
		return ""
	}
	filled := int(min(done, total) * width / total)
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + fmt.Sprintf("] %3d%%", min(done, total)*100/total)
}

func printRun(w io.Writer, r wire.RunInfo) {
	fmt.Fprintf(w, "run %s", r.ID)
	if r.Name != "" {
		fmt.Fprintf(w, " (%s)", r.Name)
	}
	fmt.Fprintf(w, "  stage %d  %s", r.Stage, r.State)
	if r.Reason != "" {
		fmt.Fprintf(w, ": %s", r.Reason)
	}
	fmt.Fprintln(w)
	if r.WaitingFor != "" {
		fmt.Fprintf(w, "waiting for: %s\n", r.WaitingFor)
	}
	fmt.Fprintf(w, "generation %d, %d workers\n", r.Generation, len(r.Members))
	for _, m := range r.Members {
		fmt.Fprintf(w, "  rank %d  %s  %s\n", m.Rank, m.Worker, m.State)
	}
	fmt.Fprintf(w, "step %s  %s\n", stepOf(r), progressBar(r.Step, r.TotalSteps))
	if r.Loss != nil {
		fmt.Fprintf(w, "loss %.4f   %.1f samples/s\n", *r.Loss, r.SamplesPerS)
	}
	if t := r.Timing; t != nil && t.StepMs > 0 {
		fmt.Fprintf(w, "step time %.1f ms: data %.1f, compute %.1f, all-reduce %.1f, idle %.1f, other %.1f\n", t.StepMs, t.DataMs, t.ComputeMs, t.AllReduceMs, t.IdleMs, t.OtherMs)
	}
	if len(r.Metrics) > 0 {
		names := make([]string, 0, len(r.Metrics))
		for k := range r.Metrics {
			names = append(names, k)
		}
		sort.Strings(names)
		parts := make([]string, 0, len(names))
		for _, k := range names {
			parts = append(parts, fmt.Sprintf("%s %.4g", k, r.Metrics[k]))
		}
		fmt.Fprintf(w, "metrics: %s\n", strings.Join(parts, ", "))
	}
	if len(r.Eval) > 0 {
		fmt.Fprintln(w, "checks on the eval set:")
		printChecks(w, r.Eval, 62)
	}
	if r.StartStep > 0 {
		fmt.Fprintf(w, "resumed from step %d\n", r.StartStep)
	}
	if r.RestoreNote != "" {
		fmt.Fprintf(w, "restore: %s\n", r.RestoreNote)
	}
	if n := len(r.Checkpoints); n > 0 {
		fmt.Fprintf(w, "checkpoints: %d committed, newest at step %d (%s)\n", n, r.Checkpoints[n-1].Step, r.Checkpoints[n-1].URL)
	}
	if r.Final != nil {
		fmt.Fprintf(w, "final model state: %s (step %d, %d bytes, sha256 %s)\n", r.Final.URL, r.Final.Step, r.Final.Bytes, short(r.Final.SHA256))
	}
}

func short(s string) string { return s[:min(12, len(s))] }

// printChecks prints one "PASS|FAIL  name value" line per check, the name
// padded to width.
func printChecks(w io.Writer, checks []wire.Check, width int) {
	for _, ch := range checks {
		verdict := "PASS"
		if !ch.Pass {
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "  %s  %-*s %s\n", verdict, width, ch.Name, ch.Value)
	}
}

// evalCommand prints the "it learned" checks each run's rank 0 measured on
// the eval split when it completed (the coordinator does not run models:
// it reports what the workers measured).
func evalCommand() *cli.Command {
	return &cli.Command{
		Name:      "eval",
		Usage:     "MODEL.md's \"it learned\" checks of completed runs (exit 1 if any fails)",
		ArgsUsage: "RUN [RUN...]",
		Flags:     clientFlags(true),
		Action: func(c *cli.Context) error {
			ids, err := cliutil.Args(c)
			if err != nil {
				return err
			}
			if len(ids) == 0 {
				return cliutil.Usagef("eval takes one or more run ids")
			}
			var infos []wire.RunInfo
			for _, id := range ids {
				info, err := callCluster(c, wire.ShowRun, &wire.RunShowRequest{ID: id})
				if err != nil {
					return err
				}
				infos = append(infos, info)
			}
			if c.Bool("json") {
				type runChecks struct {
					ID    string       `json:"id"`
					Stage int          `json:"stage"`
					State string       `json:"state"`
					Eval  []wire.Check `json:"eval"`
				}
				out := make([]runChecks, len(infos))
				for i, r := range infos {
					out[i] = runChecks{ID: r.ID, Stage: r.Stage, State: r.State, Eval: r.Eval}
				}
				if err := cliutil.PrintJSON(os.Stdout, out); err != nil {
					return err
				}
			}
			failed := 0
			for _, r := range infos {
				if len(r.Eval) == 0 {
					failed++
					if !c.Bool("json") {
						fmt.Printf("run %s (stage %d, %s): no checks (a completed run with data.eval_url set has them)\n", r.ID, r.Stage, r.State)
					}
					continue
				}
				if !c.Bool("json") {
					fmt.Printf("stage %d (run %s)\n", r.Stage, r.ID)
				}
				for _, ch := range r.Eval {
					if !ch.Pass {
						failed++
					}
				}
				if !c.Bool("json") {
					printChecks(os.Stdout, r.Eval, 64)
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed or missing", failed)
			}
			return nil
		},
	}
}
