package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/internal/cliutil"
	"github.com/lavit-org/lavit/internal/testutil"
)

// runApp runs lavit-coord in-process with args and returns what it
// printed and its error.
func runApp(args ...string) (string, error) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"lavit-coord"}, args...))
	return out.String(), err
}

func specPath(name string) string { return filepath.Join(testutil.RepoRoot(), "configs", name+".yaml") }

// TestRunPlan: run plan prints the parts and the verdict; a run that does
// not fit exits 1 (human) or prints fits false (JSON) with the fixes.
func TestRunPlan(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		fits    bool
		want    []string
		notWant string
	}{
		{"7B as shipped", []string{"-f", specPath("stage2-llama2-7b")}, true,
			[]string{"16 workers (min_workers), optim.zero 1, 1 samples per micro-batch, cuda, fp32\n", "tokenizer: stage1-lavit (assumed", "params ", "activations ", "reserve ", "fits: "}, "settings that fit"},
		{"7B in bf16", []string{"-f", specPath("stage2-llama2-7b"), "--set", "precision=bf16"}, true,
			[]string{"optim.zero 1, 1 samples per micro-batch, cuda, bf16 (gradients reduced in fp32)\n", "params                 12.80", "grads                  38.40"}, "float32"},
		{"7B in bf16 reduced in bf16", []string{"-f", specPath("stage2-llama2-7b"), "--set", "precision=bf16", "--set", "collective.reduce_dtype=bf16"}, true,
			[]string{"cuda, bf16 (gradients reduced in bf16)\n", "grads                  12.80"}, ""},
		{"7B micro_batch 10: bf16 fits", []string{"-f", specPath("stage2-llama2-7b"), "--set", "micro_batch=10"}, false,
			[]string{"does not fit: ", "--set micro_batch=9   (", "--set precision=bf16   ("}, ""},
		{"7B at zero 0", []string{"-f", specPath("stage2-llama2-7b"), "--set", "optim.zero=0"}, false,
			[]string{"does not fit: ", "--set optim.zero=1   ("}, ""},
		{"7B at 64 workers of 80 GB", []string{"-f", specPath("stage2-llama2-7b"), "--workers", "64", "--device-memory", "80GB"}, true,
			[]string{"64 workers (--workers)", "note: min_workers is 16", "device                 74.51"}, ""},
		{"stage 1 as shipped", []string{"-f", specPath("stage1-lavit")}, true, []string{"frozen ", "fits: "}, "tokenizer"},
		{"tiny stage 2 with its tokenizer named", []string{"-f", specPath("tiny-stage2"), "--tokenizer-model", "tiny-stage1", "--device-memory", "1GiB"}, true,
			[]string{"tokenizer: tiny-stage1 (--tokenizer-model)", "cpu"}, "reserve"},
	}
	for _, tt := range tests {
		out, err := runApp(append([]string{"run", "plan"}, tt.args...)...)
		if tt.fits && err != nil || !tt.fits && !errors.Is(err, errDoesNotFit) {
			t.Errorf("%s: error %v, want fits %v\n%s", tt.name, err, tt.fits, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", tt.name, w, out)
			}
		}
		if tt.notWant != "" && strings.Contains(out, tt.notWant) {
			t.Errorf("%s: output has %q:\n%s", tt.name, tt.notWant, out)
		}
	}

	// JSON: exit 0 either way; the fields scripts read.
	out, err := runApp("run", "plan", "-f", specPath("stage2-llama2-7b"), "--set", "optim.zero=0", "--json")
	if err != nil {
		t.Fatalf("--json: %v", err)
	}
	var doc struct {
		PerRankBytes int64            `json:"per_rank_bytes"`
		DeviceBytes  int64            `json:"device_bytes"`
		Fits         *bool            `json:"fits"`
		Parts        map[string]int64 `json:"parts"`
		Workers      int              `json:"workers"`
		Precision    string           `json:"precision"`
		ReduceDtype  string           `json:"reduce_dtype"`
		Fixes        []struct {
			Sets         []string `json:"sets"`
			PerRankBytes int64    `json:"per_rank_bytes"`
		} `json:"fixes"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	if doc.Fits == nil || *doc.Fits || doc.DeviceBytes != 80<<30 || doc.PerRankBytes <= doc.DeviceBytes || doc.Workers != 16 || doc.Precision != "fp32" || doc.ReduceDtype != "fp32" ||
		doc.Parts["optimizer"] != 2*doc.Parts["params"] || len(doc.Fixes) == 0 || strings.Join(doc.Fixes[0].Sets, " ") != "optim.zero=1" ||
		doc.Fixes[0].PerRankBytes > doc.DeviceBytes {
		t.Errorf("--json: %+v", doc)
	}
	out, err = runApp("run", "plan", "-f", specPath("stage2-llama2-7b"), "--set", "precision=bf16", "--json")
	if err != nil {
		t.Fatalf("--json in bf16: %v", err)
	}
	doc.Precision, doc.ReduceDtype = "", ""
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Precision != "bf16" || doc.ReduceDtype != "fp32" {
		t.Errorf("--json in bf16: precision %q, reduce_dtype %q, %v", doc.Precision, doc.ReduceDtype, err)
	}
}

// TestRunPlanBadInput: bad flags are usage errors (exit 2) naming the flag.
func TestRunPlanBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no spec", nil, "run plan needs -f FILE"},
		{"an argument", []string{"x.yaml"}, "run plan takes the spec with -f FILE"},
		{"bad size", []string{"-f", specPath("stage1-lavit"), "--device-memory", "80 gigs"}, `--device-memory: size "80 gigs": want bytes or a number with a unit`},
		{"negative size", []string{"-f", specPath("stage1-lavit"), "--device-memory", "-1GiB"}, "--device-memory"},
		{"zero workers", []string{"-f", specPath("stage1-lavit"), "--workers", "0"}, "--workers must be at least 1, got 0"},
		{"unknown tokenizer", []string{"-f", specPath("stage2-llama2-7b"), "--tokenizer-model", "nope"}, `--tokenizer-model: model "nope" is not a built-in model`},
		{"tokenizer of stage 2", []string{"-f", specPath("stage2-llama2-7b"), "--tokenizer-model", "tiny-stage2"}, "is a stage-2 model; the tokenizer is a stage-1 model"},
		{"tokenizer for stage 1", []string{"-f", specPath("stage1-lavit"), "--tokenizer-model", "tiny-stage1"}, "--tokenizer-model is for stage-2 specs"},
		{"bad --set", []string{"-f", specPath("stage1-lavit"), "--set", "optim.zero=3"}, "optim.zero must be 0"},
		{"bad precision", []string{"-f", specPath("stage1-lavit"), "--set", "precision=fp16"}, `precision must be fp32 or bf16, got "fp16"`},
		{"bf16 reduce in fp32", []string{"-f", specPath("stage1-lavit"), "--set", "collective.reduce_dtype=bf16"}, "collective.reduce_dtype bf16 needs precision bf16"},
	}
	for _, tt := range tests {
		_, err := runApp(append([]string{"run", "plan"}, tt.args...)...)
		var ue cliutil.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want a usage error mentioning %q", tt.name, err, tt.want)
		}
	}
}
