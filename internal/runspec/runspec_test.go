package runspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/lavit-org/lavit/configs"
)

// base is a valid stage-1 spec; tests edit it line by line, so the line
// numbers in the comments are part of the tests.
const base = `stage: 1
model: tiny-stage1
steps: 600
global_batch: 8
min_workers: 1
max_workers: 2
device: cpu
data:
  url: ./data/train
checkpoint:
  url: ./ckpt
  every_steps: 200
`

// base2 is a valid stage-2 spec.
const base2 = `stage: 2
model: tiny-stage2
steps: 800
global_batch: 8
data:
  url: ./data/train
tokenizer:
  from: r-0001
`

// edit replaces the line old of spec with repl (which may be several
// lines or empty), failing the test if old is not there.
func edit(t *testing.T, spec, old, repl string) string {
	t.Helper()
	if !strings.Contains(spec, old+"\n") {
		t.Fatalf("edit: %q is not a line of the spec", old)
	}
	if repl != "" {
		repl += "\n"
	}
	return strings.Replace(spec, old+"\n", repl, 1)
}

func TestExamples(t *testing.T) {
	names := configs.ExampleNames()
	if want := []string{"stage1-lavit", "stage2-llama2-7b", "tiny-stage1", "tiny-stage2"}; !slices.Equal(names, want) {
		t.Fatalf("ExampleNames() = %v, want %v", names, want)
	}
	cwd := t.TempDir()
	for _, tc := range []struct {
		name  string
		check func(t *testing.T, s *Spec)
	}{
		{"tiny-stage1", func(t *testing.T, s *Spec) {
			want := Spec{Stage: 1, Model: "tiny-stage1", Seed: 1, Steps: 600, GlobalBatch: 8, MinWorkers: 1, MaxWorkers: 2, Device: "cpu"}
			got := Spec{Stage: s.Stage, Model: s.Model, Seed: s.Seed, Steps: s.Steps, GlobalBatch: s.GlobalBatch, MinWorkers: s.MinWorkers, MaxWorkers: s.MaxWorkers, Device: s.Device}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("top-level keys = %+v, want %+v", got, want)
			}
			if s.Stage1 != (Stage1{PhaseASteps: 400, KMeansBatches: 16}) {
				t.Errorf("stage1 = %+v", s.Stage1)
			}
			if want := (Data{URL: "file://" + cwd + "/demo-out/data/train", EvalURL: "file://" + cwd + "/demo-out/data/eval", BlockShards: 4}); s.Data != want {
				t.Errorf("data = %+v, want %+v", s.Data, want)
			}
			if want := (Checkpoint{URL: "file://" + cwd + "/demo-out/checkpoints", EverySteps: 200, Keep: 3}); s.Checkpoint != want {
				t.Errorf("checkpoint = %+v, want %+v", s.Checkpoint, want)
			}
			if s.Collective != (Collective{Backend: "ring", Timeout: "120s", ReduceDtype: "fp32"}) || s.Metrics.EverySteps != 20 || s.Precision != "fp32" {
				t.Errorf("collective = %+v, metrics = %+v, precision %q", s.Collective, s.Metrics, s.Precision)
			}
		}},
		{"tiny-stage2", func(t *testing.T, s *Spec) {
			if s.Stage != 2 || s.Steps != 800 || s.Tokenizer.From != "r-0001" || s.Checkpoint.EverySteps != 400 || s.Stage1 != (Stage1{}) {
				t.Errorf("got stage %d steps %d tokenizer.from %q every_steps %d stage1 %+v", s.Stage, s.Steps, s.Tokenizer.From, s.Checkpoint.EverySteps, s.Stage1)
			}
			if s.Data.URL != "file://"+cwd+"/demo-out/data/train" {
				t.Errorf("data.url = %q", s.Data.URL)
			}
		}},
		{"stage1-lavit", func(t *testing.T, s *Spec) {
			if s.Device != "cuda" || s.Collective.Backend != "nccl" || !strings.HasPrefix(s.Data.URL, "s3://") || !strings.HasPrefix(s.Checkpoint.URL, "s3://") {
				t.Errorf("got device %q backend %q data.url %q checkpoint.url %q", s.Device, s.Collective.Backend, s.Data.URL, s.Checkpoint.URL)
			}
		}},
		{"stage2-llama2-7b", func(t *testing.T, s *Spec) {
			if s.Stage != 2 || s.MinWorkers != 16 || s.MaxWorkers != 64 || s.Optim.LR == nil || *s.Optim.LR != 2e-4 {
				t.Errorf("got stage %d workers %d–%d optim %+v", s.Stage, s.MinWorkers, s.MaxWorkers, s.Optim)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := configs.Example(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			s, err := Parse(tc.name+".yaml", data, nil)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if err := s.Resolve(cwd, os.ReadFile); err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			model, _ := configs.Model(s.Model)
			var compact bytes.Buffer
			json.Compact(&compact, model)
			if !bytes.Equal(s.ModelConfig, compact.Bytes()) {
				t.Errorf("model_config = %s, want %s", s.ModelConfig, compact.Bytes())
			}
			tc.check(t, s)
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  string
		sets  []string
		field string // the *FieldError's field; "" when the error is not one
		want  string // a substring of the error
	}{
		// The file's structure.
		{"empty file", "", nil, "", "x.yaml: empty run spec"},
		{"only comments", "# nothing\n", nil, "", "x.yaml: empty run spec"},
		{"null document", "~\n", nil, "", "x.yaml: empty run spec"},
		{"list", "- stage: 1\n", nil, "", "x.yaml:1: a run spec is a mapping of keys (like stage: 1), got a list"},
		{"scalar", "hello\n", nil, "", `x.yaml:1: a run spec is a mapping of keys (like stage: 1), got "hello"`},
		{"two documents", base + "---\nstage: 2\n", nil, "", "x.yaml:13: a second YAML document"},
		{"tab", "stage: 1\n\tmodel: x\n", nil, "", "x.yaml:2: invalid YAML: found a tab character"},
		{"unclosed", "stage: [1\n", nil, "", "x.yaml:1: invalid YAML: did not find expected ',' or ']'"},
		{"tab in a token", "stage: 1\nmodel:\t\t[\n", nil, "", "x.yaml:2: invalid YAML"},
		{"too big", base + "#" + strings.Repeat("x", MaxSpecBytes) + "\n", nil, "", "the limit is 65536"},
		{"non-scalar key", base + "[a]: 1\n", nil, "", "x.yaml:13: keys must be plain names"},

		// Unknown fields and wrong types, with lines.
		{"unknown field", edit(t, base, "steps: 600", "stepz: 600"), nil, "", `x.yaml:3: unknown field "stepz"; valid keys here: activation_checkpointing, checkpoint, collective, data,`},
		{"unknown nested field", edit(t, base, "  url: ./data/train", "  urll: ./data/train"), nil, "", `x.yaml:9: unknown field "data.urll"; valid keys here: data.block_shards, data.eval_url, data.manifest, data.url`},
		{"model_config in YAML", base + "model_config: {}\n", nil, "", `x.yaml:13: unknown field "model_config"`},
		{"string for int", edit(t, base, "steps: 600", "steps: lots"), nil, "", `x.yaml:3: steps: want an integer, got "lots"`},
		{"float for int", edit(t, base, "steps: 600", "steps: 1.5"), nil, "", `x.yaml:3: steps: want an integer, got "1.5"`},
		{"negative seed", base + "seed: -1\n", nil, "", `x.yaml:13: seed: want a non-negative integer, got "-1"`},
		{"string for float", base + "optim:\n  lr: fast\n", nil, "", `x.yaml:14: optim.lr: want a number, got "fast"`},
		{"list for string", base + "name: [a, b]\n", nil, "", "x.yaml:13: name: want a string, got a list"},
		{"scalar for section", base + "metrics: 5\n", nil, "", `x.yaml:13: metrics: want a mapping of keys (metrics.every_steps), got "5"`},
		{"duplicate key", base + "steps: 10\n", nil, "", "x.yaml:13: steps is set twice (first at line 3)"},

		// Impossible values: each names its field.
		{"stage", edit(t, base, "stage: 1", "stage: 3"), nil, "stage", "x.yaml:1: stage must be 1 (tokenizer) or 2 (language model), got 3"},
		{"no model", edit(t, base, "model: tiny-stage1", ""), nil, "model", "x.yaml: model is required"},
		{"steps and epochs", base + "epochs: 2\n", nil, "epochs", "x.yaml:13: steps (600) and epochs (2) are both set; set exactly one"},
		{"neither steps nor epochs", edit(t, base, "steps: 600", ""), nil, "steps", "x.yaml: steps or epochs is required"},
		{"negative steps", edit(t, base, "steps: 600", "steps: -5"), nil, "steps", "x.yaml:3: steps must be positive, got -5"},
		{"negative epochs", edit(t, base, "steps: 600", "epochs: -1"), nil, "epochs", "x.yaml:3: epochs must be positive, got -1"},
		{"global_batch", edit(t, base, "global_batch: 8", "global_batch: 0"), nil, "global_batch", "x.yaml:4: global_batch must be at least 1, got 0"},
		{"min_workers", edit(t, base, "min_workers: 1", "min_workers: 0"), nil, "min_workers", "x.yaml:5: min_workers must be at least 1, got 0"},
		{"min > max", edit(t, edit(t, base, "min_workers: 1", "min_workers: 2"), "max_workers: 2", "max_workers: 1"), nil, "max_workers", "x.yaml:6: max_workers 1 is less than min_workers 2"},
		{"batch not splittable", edit(t, base, "global_batch: 8", "global_batch: 1"), nil, "global_batch", "x.yaml:4: global_batch 1 cannot be split over max_workers 2: every rank needs at least one sample"},
		{"device", edit(t, base, "device: cpu", "device: gpu"), nil, "device", `x.yaml:7: device must be cpu, cuda or auto, got "gpu"`},
		{"no data.url", edit(t, base, "  url: ./data/train", "  eval_url: ./data/eval"), nil, "data.url", "x.yaml:8: data.url is required"},
		{"no data", edit(t, edit(t, base, "data:", ""), "  url: ./data/train", ""), nil, "data.url", "x.yaml: data.url is required"},
		{"key in the wrong section", base + "  block_shards: 0\n", nil, "", `x.yaml:13: unknown field "checkpoint.block_shards"`},
		{"data.block_shards", edit(t, base, "  url: ./data/train", "  url: ./data/train\n  block_shards: 0"), nil, "data.block_shards", "x.yaml:10: data.block_shards must be at least 1, got 0"},
		{"name too long", base + "name: " + strings.Repeat("n", MaxNameLen+1) + "\n", nil, "name", "x.yaml:13: name is 129 bytes long"},
		{"name control", base + "name: \"a\\x07b\"\n", nil, "name", "name \"a\\ab\" has control characters"},

		// URLs, one per field.
		{"data.url scheme", edit(t, base, "  url: ./data/train", "  url: http://example.com/train"), nil, "data.url", `x.yaml:9: data.url: want file:///absolute/path or s3://bucket[/prefix], got "http://example.com/train"`},
		{"data.url relative file URL", edit(t, base, "  url: ./data/train", "  url: file://data/train"), nil, "data.url", "a file URL needs an absolute path"},
		{"data.url brace pattern", edit(t, base, "  url: ./data/train", "  url: s3://laion-wds/train-{000000..012799}.tar"), nil, "data.url", "brace patterns are not supported"},
		{"data.url no bucket", base, []string{"data.url=s3:///train"}, "data.url", `x.yaml: --set data.url=s3:///train: data.url: want file:///absolute/path or s3://bucket[/prefix], got "s3:///train" (bad bucket name "")`},
		{"data.eval_url scheme", base, []string{"data.eval_url=ftp://host/eval"}, "data.eval_url", `x.yaml: --set data.eval_url=ftp://host/eval: data.eval_url: want file:///absolute/path`},
		{"data.manifest scheme", base, []string{"data.manifest=gs://b/manifest.json"}, "data.manifest", "data.manifest: want file:///absolute/path"},
		{"checkpoint.url scheme", edit(t, base, "  url: ./ckpt", "  url: https://store/ckpt"), nil, "checkpoint.url", "x.yaml:11: checkpoint.url: want file:///absolute/path"},
		{"tokenizer.from scheme", base2, []string{"tokenizer.from=http://x/state"}, "tokenizer.from", "--set tokenizer.from=http://x/state: tokenizer.from: want file:///absolute/path"},

		// Optimizer overrides.
		{"optim.lr", base, []string{"optim.lr=-1"}, "optim.lr", "x.yaml: --set optim.lr=-1: optim.lr must be a finite number ≥ 0, got -1"},
		{"optim.lr nan", base, []string{"optim.lr=.nan"}, "optim.lr", "optim.lr must be a finite number ≥ 0, got NaN"},
		{"optim.selector_lr", base, []string{"optim.selector_lr=-0.1"}, "optim.selector_lr", "optim.selector_lr must be a finite number ≥ 0"},
		{"optim.weight_decay", base, []string{"optim.weight_decay=-1"}, "optim.weight_decay", "optim.weight_decay must be a finite number ≥ 0"},
		{"optim.clip", base, []string{"optim.clip=.inf"}, "optim.clip", "optim.clip must be a finite number ≥ 0, got +Inf"},
		{"optim.min_lr_ratio", base + "optim:\n  min_lr_ratio: 1.5\n", nil, "optim.min_lr_ratio", "x.yaml:14: optim.min_lr_ratio must be in [0,1], got 1.5"},
		{"optim.warmup_steps", base, []string{"optim.warmup_steps=-1"}, "optim.warmup_steps", "optim.warmup_steps must not be negative, got -1"},
		{"optim.zero 3", base, []string{"optim.zero=3"}, "optim.zero", "optim.zero must be 0 (no sharding), 1 (sharded optimizer state) or 2 (also sharded gradients), got 3"},
		{"optim.zero negative", base, []string{"optim.zero=-1"}, "optim.zero", "optim.zero must be 0"},
		{"micro_batch negative", base, []string{"micro_batch=-2"}, "micro_batch", "micro_batch must not be negative"},
		{"activation_checkpointing not a bool", base, []string{"activation_checkpointing=1"}, "", `x.yaml: --set activation_checkpointing=1: activation_checkpointing: want true or false, got "1"`},
		{"micro_batch above global_batch", base, []string{"micro_batch=100000"}, "micro_batch", "micro_batch 100000 is larger than global_batch"},
		{"precision unknown", base, []string{"precision=fp16"}, "precision", `x.yaml: --set precision=fp16: precision must be fp32 or bf16, got "fp16"`},
		{"precision upper case", base + "precision: BF16\n", nil, "precision", `x.yaml:13: precision must be fp32 or bf16, got "BF16"`},
		{"precision not a string", base + "precision: [bf16]\n", nil, "", "x.yaml:13: precision: want a string, got a list"},
		{"reduce_dtype unknown", base, []string{"collective.reduce_dtype=fp16"}, "collective.reduce_dtype", `collective.reduce_dtype must be fp32 or bf16, got "fp16"`},
		{"bucket_mb negative", base, []string{"collective.bucket_mb=-1"}, "collective.bucket_mb", "collective.bucket_mb must be a size in MiB ≥ 0"},
		{"reduce_dtype bf16 in fp32", base, []string{"collective.reduce_dtype=bf16"}, "collective.reduce_dtype", "x.yaml: --set collective.reduce_dtype=bf16: collective.reduce_dtype bf16 needs precision bf16 (precision is fp32"},
		{"reduce_dtype bf16 with precision fp32 set", base + "precision: fp32\ncollective:\n  reduce_dtype: bf16\n", nil, "collective.reduce_dtype", "x.yaml:15: collective.reduce_dtype bf16 needs precision bf16"},

		// Determinism.
		{"determinism unknown", base, []string{"determinism=exact"}, "determinism", `determinism must be fast or bitwise, got "exact"`},
		{"group without bitwise", base, []string{"determinism_group=2"}, "determinism_group", "determinism_group is for determinism: bitwise only (determinism is fast)"},
		{"group not dividing", base, []string{"determinism=bitwise", "determinism_group=3"}, "determinism_group", "determinism_group 3 does not divide global_batch 8 into whole groups"},
		{"too few groups", base, []string{"determinism=bitwise", "determinism_group=8"}, "determinism_group", "determinism_group 8 makes 1 groups, fewer than max_workers 2"},
		{"group zero", base, []string{"determinism=bitwise", "determinism_group=0"}, "determinism_group", "determinism_group must be at least 1 sample, got 0"},
		{"micro_batch other than the group", base, []string{"determinism=bitwise", "micro_batch=1"}, "micro_batch", "leave micro_batch out or set it to determinism_group (4), got 1"},
		{"bitwise bf16 sums", base, []string{"determinism=bitwise", "precision=bf16", "collective.reduce_dtype=bf16"}, "collective.reduce_dtype", "collective.reduce_dtype must be fp32, got bf16"},
		{"bitwise buckets", base, []string{"determinism=bitwise", "collective.bucket_mb=4"}, "collective.bucket_mb", "leave collective.bucket_mb out"},
		{"bitwise too many workers", base, []string{"determinism=bitwise", "global_batch=1024", "max_workers=300", "determinism_group=1"}, "max_workers", "at most 255 ranks"},

		// Stage rules.
		{"phase_a_steps >= steps", base + "stage1:\n  phase_a_steps: 600\n", nil, "stage1.phase_a_steps", "x.yaml:14: stage1.phase_a_steps 600 must be less than steps 600"},
		{"phase_a_steps negative", base, []string{"stage1.phase_a_steps=-1"}, "stage1.phase_a_steps", "stage1.phase_a_steps must not be negative"},
		{"kmeans_batches", base, []string{"stage1.kmeans_batches=0"}, "stage1.kmeans_batches", "--set stage1.kmeans_batches=0: stage1.kmeans_batches must be at least 1, got 0"},
		{"stage1 keys in stage 2", base2 + "stage1:\n  kmeans_batches: 4\n", nil, "stage1.kmeans_batches", "x.yaml:10: stage1.kmeans_batches is for stage-1 runs only (this is stage 2)"},
		{"phase_a in stage 2", base2, []string{"stage1.phase_a_steps=5"}, "stage1.phase_a_steps", "stage1.phase_a_steps is for stage-1 runs only"},
		{"stage 2 without tokenizer.from", edit(t, edit(t, base2, "tokenizer:", ""), "  from: r-0001", ""), nil, "tokenizer.from", "x.yaml: tokenizer.from is required for stage 2"},
		{"stage 2 with empty tokenizer.from", base2, []string{"tokenizer.from="}, "tokenizer.from", "x.yaml: --set tokenizer.from=: tokenizer.from is required for stage 2"},
		{"stage 1 with tokenizer.from", base + "tokenizer:\n  from: r-0001\n", nil, "tokenizer.from", "x.yaml:14: tokenizer.from is for stage-2 runs only (this is stage 1)"},
		{"init_from.lm in stage 1", base + "init_from:\n  lm: s3://w/llama-2-7b\n", nil, "init_from.lm", "x.yaml:14: init_from.lm is for stage-2 runs only (this is stage 1)"},
		{"init_from.encoder in stage 2", base2, []string{"init_from.encoder=s3://w/eva"}, "init_from.encoder", "--set init_from.encoder=s3://w/eva: init_from.encoder is for stage-1 runs only (this is stage 2)"},
		{"init_from.lm scheme", base2, []string{"init_from.lm=https://hf.co/llama"}, "init_from.lm", "init_from.lm: want file:///absolute/path or s3://bucket[/prefix]"},
		{"init_from.encoder bucket", base + "init_from:\n  encoder: s3://Bad_Bucket/eva\n", nil, "init_from.encoder", `bad bucket name "Bad_Bucket"`},
		{"init_from unknown module", base + "init_from:\n  vit: s3://w/eva\n", nil, "", `x.yaml:14: unknown field "init_from.vit"; valid keys here: init_from.encoder, init_from.lm`},

		// Collective.
		{"backend", base + "collective:\n  backend: mpi\n", nil, "collective.backend", `x.yaml:14: collective.backend must be ring or nccl, got "mpi"`},
		{"nccl on cpu", base, []string{"collective.backend=nccl"}, "collective.backend", "--set collective.backend=nccl: collective.backend nccl needs GPUs; device is cpu"},
		{"timeout syntax", base, []string{"collective.timeout=soon"}, "collective.timeout", `collective.timeout: want a duration like 60s or 2m, got "soon"`},
		{"timeout without unit", base, []string{"collective.timeout=60"}, "collective.timeout", `collective.timeout: want a duration like 60s or 2m, got "60"`},
		{"timeout zero", base, []string{"collective.timeout=0s"}, "collective.timeout", "collective.timeout must be positive, got 0s"},

		// Checkpoints and metrics.
		{"every_steps", edit(t, base, "  every_steps: 200", "  every_steps: -1"), nil, "checkpoint.every_steps", "x.yaml:12: checkpoint.every_steps must not be negative"},
		{"every_minutes", base, []string{"checkpoint.every_minutes=-2"}, "checkpoint.every_minutes", "checkpoint.every_minutes must be a finite number ≥ 0"},
		{"keep", base, []string{"checkpoint.keep=0"}, "checkpoint.keep", "x.yaml: --set checkpoint.keep=0: checkpoint.keep must be at least 1, got 0"},
		{"every_steps without url", edit(t, base, "  url: ./ckpt", ""), nil, "checkpoint.url", "x.yaml:10: checkpoint.url is required when checkpoint.every_steps"},
		{"metrics.every_steps", base + "metrics:\n  every_steps: 0\n", nil, "metrics.every_steps", "x.yaml:14: metrics.every_steps must be at least 1, got 0"},

		// Upper bounds: each names the field and the limit.
		{"steps too many", base, []string{"steps=1099511627777"}, "steps", "--set steps=1099511627777: steps is 1099511627777; the limit is 1099511627776"},
		{"steps beyond int64", base, []string{"steps=9223372036854775808"}, "", `steps: want an integer, got "9223372036854775808"`},
		{"epochs too many", edit(t, base, "steps: 600", "epochs: 1048577"), nil, "epochs", "x.yaml:3: epochs is 1048577; the limit is 1048576"},
		{"global_batch too large", base, []string{"global_batch=1048577"}, "global_batch", "global_batch is 1048577; the limit is 1048576"},
		{"min_workers too many", base, []string{"min_workers=65537", "max_workers=65537", "global_batch=100000"}, "min_workers", "min_workers is 65537; the limit is 65536"},
		{"max_workers too many", base, []string{"max_workers=65537", "global_batch=100000"}, "max_workers", "max_workers is 65537; the limit is 65536"},
		{"block_shards too many", base, []string{"data.block_shards=65537"}, "data.block_shards", "data.block_shards is 65537; the limit is 65536"},
		{"kmeans_batches too many", base, []string{"stage1.kmeans_batches=65537"}, "stage1.kmeans_batches", "--set stage1.kmeans_batches=65537: stage1.kmeans_batches is 65537; the limit is 65536"},
		{"phase_a_steps too many with epochs", edit(t, base, "steps: 600", "epochs: 2"), []string{"stage1.phase_a_steps=1099511627777"}, "stage1.phase_a_steps", "stage1.phase_a_steps is 1099511627777; the limit is 1099511627776"},
		{"optim.lr too large", base, []string{"optim.lr=11"}, "optim.lr", "optim.lr is 11; the limit is 10"},
		{"optim.selector_lr too large", base, []string{"optim.selector_lr=1e300"}, "optim.selector_lr", "optim.selector_lr is 1e+300; the limit is 10"},
		{"optim.weight_decay too large", base, []string{"optim.weight_decay=100"}, "optim.weight_decay", "optim.weight_decay is 100; the limit is 10"},
		{"optim.clip too large", base, []string{"optim.clip=1e10"}, "optim.clip", "optim.clip is 1e+10; the limit is 1e+09"},
		{"optim.min_lr_ratio nan", base, []string{"optim.min_lr_ratio=.nan"}, "optim.min_lr_ratio", "optim.min_lr_ratio must be a finite number ≥ 0, got NaN"},
		{"optim.warmup_steps too many", base, []string{"optim.warmup_steps=1099511627777"}, "optim.warmup_steps", "optim.warmup_steps is 1099511627777; the limit is 1099511627776"},
		{"timeout too long", base, []string{"collective.timeout=25h"}, "collective.timeout", "collective.timeout is 25h; the limit is 24h0m0s"},
		{"timeout too long a string", base, []string{"collective.timeout=" + strings.Repeat("0", 100) + "1s"}, "collective.timeout", "collective.timeout is 102 bytes long; want a duration like 60s or 2m"},
		{"timeout overflows", base, []string{"collective.timeout=9999999999h"}, "collective.timeout", "collective.timeout: want a duration like 60s or 2m"},
		{"bucket_mb too large", base, []string{"collective.bucket_mb=65537"}, "collective.bucket_mb", "collective.bucket_mb is 65537; the limit is 65536"},
		{"bucket_mb inf", base, []string{"collective.bucket_mb=.inf"}, "collective.bucket_mb", "collective.bucket_mb must be a size in MiB ≥ 0 (0: reduce after backward in one call), got +Inf"},
		{"bucket_mb nan", base, []string{"collective.bucket_mb=.nan"}, "collective.bucket_mb", "got NaN"},
		{"every_steps too many", base, []string{"checkpoint.every_steps=1099511627777"}, "checkpoint.every_steps", "checkpoint.every_steps is 1099511627777; the limit is 1099511627776"},
		{"every_minutes too many", base, []string{"checkpoint.every_minutes=1e12"}, "checkpoint.every_minutes", "checkpoint.every_minutes is 1e+12; the limit is 525600 (a year)"},
		{"every_minutes nan", base, []string{"checkpoint.every_minutes=.nan"}, "checkpoint.every_minutes", "checkpoint.every_minutes must be a finite number ≥ 0 (0 is off), got NaN"},
		{"keep too many", base, []string{"checkpoint.keep=65537"}, "checkpoint.keep", "checkpoint.keep is 65537; the limit is 65536"},
		{"metrics.every_steps too many", base, []string{"metrics.every_steps=1099511627777"}, "metrics.every_steps", "metrics.every_steps is 1099511627777; the limit is 1099511627776"},
		{"micro_batch beyond int", base, []string{"micro_batch=99999999999999999999"}, "", `micro_batch: want an integer, got "99999999999999999999"`},

		{"data.url too long", base, []string{"data.url=/" + strings.Repeat("d", MaxPathLen)}, "data.url", "data.url is 4097 bytes long; the limit is 4096"},
		{"data.url control", edit(t, base, "  url: ./data/train", `  url: "./da\tta"`), nil, "data.url", `x.yaml:9: data.url "./da\tta" has control characters`},
		{"data.eval_url newline", base, []string{"data.eval_url=\"/e\\nINFO forged\""}, "data.eval_url", `data.eval_url "/e\nINFO forged" has control characters`},
		{"checkpoint.url too long", base, []string{"checkpoint.url=s3://b/" + strings.Repeat("c", MaxPathLen)}, "checkpoint.url", "checkpoint.url is 4103 bytes long; the limit is 4096"},
		{"tokenizer.from control", base2, []string{"tokenizer.from=\"/s\\x00\""}, "tokenizer.from", `tokenizer.from "/s\x00" has control characters`},
		{"model too long", base, []string{"model=" + strings.Repeat("m", MaxPathLen+1)}, "model", "model is 4097 bytes long; the limit is 4096"},
		{"model control", base, []string{"model=\"m\\t.json\""}, "model", `model "m\t.json" has control characters`},

		// --set.
		{"set unknown key", base, []string{"stepz=1"}, "", `x.yaml: --set stepz=1: unknown key "stepz"; valid keys here: activation_checkpointing, checkpoint, collective, data, determinism, determinism_group, device, epochs,`},
		{"set unknown nested key", base, []string{"data.urll=x"}, "", `--set data.urll=x: unknown key "data.urll"; valid keys here: data.block_shards, data.eval_url, data.manifest, data.url`},
		{"set unknown section", base, []string{"optimizer.lr=1"}, "", `--set optimizer.lr=1: unknown key "optimizer"`},
		{"set wrong type", base, []string{"steps=abc"}, "", `x.yaml: --set steps=abc: steps: want an integer, got "abc"`},
		{"set without =", base, []string{"steps"}, "", "x.yaml: --set steps: want key=value"},
		{"set empty key", base, []string{"=5"}, "", "--set =5: want key=value"},
		{"set a section", base, []string{"data=s3://b/p"}, "", "--set data=s3://b/p: data is a section; set one of its keys: data.block_shards, data.eval_url, data.manifest, data.url"},
		{"set below a value", base, []string{"steps.x=1"}, "", "--set steps.x=1: steps is a value, not a section"},
		{"set a mapping", base, []string{"name={a: 1}"}, "", `--set name={a: 1}: value "{a: 1}" is a mapping, not a single value`},
		{"set bad YAML", base, []string{`name="unclosed`}, "", `--set name="unclosed: value "\"unclosed" is not valid YAML`},
		{"set makes max < min", base, []string{"max_workers=0"}, "max_workers", "x.yaml: --set max_workers=0: max_workers 0 is less than min_workers 1"},
		{"later set wins", base, []string{"steps=5", "steps=abc"}, "", "--set steps=abc: steps: want an integer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("x.yaml", []byte(tc.spec), tc.sets)
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want an error containing %q", s, tc.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tc.want)
			}
			var fe *FieldError
			if errors.As(err, &fe) != (tc.field != "") || (fe != nil && fe.Field != tc.field) {
				t.Errorf("error %q: FieldError %+v, want field %q", err, fe, tc.field)
			}
		})
	}
}

func TestParseOK(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		name  string
		spec  string
		sets  []string
		check func(s *Spec) bool
	}{
		{"defaults", "stage: 1\nmodel: m.json\nsteps: 90\nglobal_batch: 4\ndata: {url: /d}\n", nil, func(s *Spec) bool {
			return s.MinWorkers == 1 && s.MaxWorkers == 1 && s.Device == "auto" && s.Data.BlockShards == 4 &&
				s.Stage1 == (Stage1{PhaseASteps: 60, KMeansBatches: 16}) && s.Collective == (Collective{Backend: "ring", Timeout: "120s", ReduceDtype: "fp32"}) &&
				s.Checkpoint == (Checkpoint{Keep: 3}) && s.Metrics.EverySteps == 10 && s.Optim == (Optim{}) && s.Seed == 0 &&
				s.Precision == "fp32"
		}},
		{"max_workers defaults to min_workers", "stage: 1\nmodel: m\nsteps: 9\nglobal_batch: 4\nmin_workers: 3\ndata: {url: /d}\n", nil, func(s *Spec) bool {
			return s.MinWorkers == 3 && s.MaxWorkers == 3
		}},
		{"epochs leaves phase_a_steps to run time", "stage: 1\nmodel: m\nepochs: 2\nglobal_batch: 4\ndata: {url: /d}\n", nil, func(s *Spec) bool {
			return s.Epochs == 2 && s.Stage1.PhaseASteps == 0 && s.PhaseASteps(30) == 20
		}},
		{"trailing document marker", "---\n" + base + "---\n", nil, func(s *Spec) bool { return s.Steps == 600 }},
		{"null is unset", base + "seed:\nmetrics:\n", nil, func(s *Spec) bool { return s.Seed == 0 && s.Metrics.EverySteps == 10 }},
		{"aliases", edit(t, base, "steps: 600", "steps: &n 600") + "metrics:\n  every_steps: *n\n", nil, func(s *Spec) bool { return s.Metrics.EverySteps == 600 }},
		{"set overrides a key", base, []string{"steps=20"}, func(s *Spec) bool { return s.Steps == 20 && s.Stage1.PhaseASteps == 13 }},
		{"set adds a top-level key", base, []string{"name=demo run"}, func(s *Spec) bool { return s.Name == "demo run" }},
		{"set adds to a section", base, []string{"checkpoint.keep=7"}, func(s *Spec) bool { return s.Checkpoint.Keep == 7 && s.Checkpoint.EverySteps == 200 }},
		{"set adds a section", base, []string{"optim.lr=0.5", "optim.warmup_steps=10"}, func(s *Spec) bool {
			return reflect.DeepEqual(s.Optim.LR, f(0.5)) && s.Optim.WarmupSteps != nil && *s.Optim.WarmupSteps == 10 && s.Optim.Clip == nil
		}},
		{"set an s3 URL", base, []string{"data.url=s3://b/p"}, func(s *Spec) bool { return s.Data.URL == "s3://b/p" }},
		{"set zero differs from unset", base, []string{"optim.weight_decay=0"}, func(s *Spec) bool {
			return s.Optim.WeightDecay != nil && *s.Optim.WeightDecay == 0
		}},
		{"set a quoted string", base, []string{`name="a: b"`}, func(s *Spec) bool { return s.Name == "a: b" }},
		{"set a number as a string", base, []string{"name=42"}, func(s *Spec) bool { return s.Name == "42" }},
		{"set into a null section", base + "optim:\n", []string{"optim.clip=2"}, func(s *Spec) bool { return reflect.DeepEqual(s.Optim.Clip, f(2)) }},
		{"set the memory keys", base, []string{"optim.zero=2", "micro_batch=2", "activation_checkpointing=true"}, func(s *Spec) bool {
			return s.Optim.Zero == 2 && s.MicroBatch == 2 && s.ActivationCheckpointing
		}},
		{"precision bf16 keeps the fp32 reduce", base, []string{"precision=bf16"}, func(s *Spec) bool {
			return s.Precision == PrecisionBF16 && s.Collective.ReduceDtype == PrecisionFP32
		}},
		{"precision bf16 with a bf16 reduce", base + "precision: bf16\ncollective:\n  reduce_dtype: bf16\n", nil, func(s *Spec) bool {
			return s.Precision == PrecisionBF16 && s.Collective.ReduceDtype == PrecisionBF16
		}},
		{"bucket_mb in MiB", base, []string{"collective.bucket_mb=0.5"}, func(s *Spec) bool {
			return s.Collective.BucketMB == 0.5 && s.Collective.BucketBytes() == 512<<10
		}},
		{"set both precisions", base, []string{"precision=bf16", "collective.reduce_dtype=bf16"}, func(s *Spec) bool {
			return s.Precision == PrecisionBF16 && s.Collective.ReduceDtype == PrecisionBF16 && s.Collective.Backend == "ring"
		}},
		{"precision fp32 spelled out", base + "precision: fp32\n", []string{"collective.reduce_dtype=fp32"}, func(s *Spec) bool {
			return s.Precision == PrecisionFP32 && s.Collective.ReduceDtype == PrecisionFP32
		}},
		{"null precision is the default", base + "precision:\n", nil, func(s *Spec) bool { return s.Precision == DefaultPrecision }},
		{"set epochs after clearing steps", base, []string{"steps=", "epochs=3"}, func(s *Spec) bool {
			return s.Steps == 0 && s.Epochs == 3 && s.Stage1.PhaseASteps == 0
		}},
		{"set fixes an invalid file", edit(t, base, "max_workers: 2", "max_workers: 9"), []string{"max_workers=2"}, func(s *Spec) bool { return s.MaxWorkers == 2 }},
		{"tokenizer.from URL", base2, []string{"tokenizer.from=s3://ckpt/run/final"}, func(s *Spec) bool { return s.Tokenizer.From == "s3://ckpt/run/final" }},
		{"local paths before Resolve", base2, []string{"tokenizer.from=./state", "data.manifest=m.json"}, func(s *Spec) bool {
			return s.Tokenizer.From == "./state" && s.Data.Manifest == "m.json"
		}},
		{"every limit itself", edit(t, base, "steps: 600", "epochs: 1048576"), []string{"global_batch=1048576", "max_workers=65536", "micro_batch=1048576",
			"data.block_shards=65536", "stage1.kmeans_batches=65536", "stage1.phase_a_steps=1099511627776", "optim.lr=10", "optim.selector_lr=10",
			"optim.weight_decay=10", "optim.clip=1e9", "optim.warmup_steps=1099511627776", "collective.timeout=24h", "collective.bucket_mb=65536",
			"checkpoint.every_steps=1099511627776", "checkpoint.every_minutes=525600", "checkpoint.keep=65536", "metrics.every_steps=1099511627776"},
			func(s *Spec) bool {
				return s.Epochs == MaxEpochs && s.GlobalBatch == MaxGlobalBatch && s.Collective.BucketBytes() == 64<<30 && s.CollectiveTimeout() == MaxTimeout
			}},
		{"nccl with auto device", base2, []string{"collective.backend=nccl"}, func(s *Spec) bool { return s.Device == "auto" && s.Collective.Backend == "nccl" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("x.yaml", []byte(tc.spec), tc.sets)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(s) {
				t.Errorf("unexpected spec: %+v", s)
			}
		})
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for _, name := range configs.ExampleNames() {
		t.Run(name, func(t *testing.T) {
			data, _ := configs.Example(name)
			want, err := Parse(name+".yaml", data, []string{"optim.weight_decay=0", "checkpoint.every_minutes=1.5"})
			if err != nil {
				t.Fatal(err)
			}
			if err := want.Resolve(t.TempDir(), os.ReadFile); err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			var got Spec
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields() // as the coordinator decodes it
			if err := dec.Decode(&got); err != nil {
				t.Fatal(err)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate after the round trip: %v", err)
			}
			want.origin, want.file = nil, ""
			if !reflect.DeepEqual(&got, want) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, *want)
			}
			if got.Optim.WeightDecay == nil || *got.Optim.WeightDecay != 0 {
				t.Errorf("optim.weight_decay 0 did not survive: %v", got.Optim.WeightDecay)
			}
		})
	}
}

func TestValidateJSON(t *testing.T) {
	good := `{"stage":1,"model":"tiny-stage1","steps":10,"global_batch":4,"min_workers":1,"max_workers":2,"device":"cpu",
		"data":{"url":"file:///d","block_shards":4},"stage1":{"phase_a_steps":5,"kmeans_batches":2},
		"collective":{"backend":"ring","timeout":"60s"},"checkpoint":{"url":"s3://b/c","every_steps":5,"keep":2},"metrics":{"every_steps":1}}`
	for _, tc := range []struct {
		name string
		json string
		want string // "" for valid
	}{
		{"valid", good, ""},
		{"local path", strings.Replace(good, `"file:///d"`, `"./d"`, 1), `data.url: want file:///absolute/path or s3://bucket[/prefix], got the local path "./d"`},
		{"no defaults applied", strings.Replace(good, `"timeout":"60s"`, `"timeout":""`, 1), `collective.timeout: want a duration`},
		{"model config stage", strings.Replace(good, `"steps":10`, `"steps":10,"model_config":{"stage":2}`, 1), "model tiny-stage1 is a stage-2 model, but the spec's stage is 1"},
		{"no precision keys: fp32", good, ""},
		{"bf16 precision and reduce", strings.Replace(strings.Replace(good, `"timeout":"60s"`, `"timeout":"60s","reduce_dtype":"bf16"`, 1), `"stage":1,`, `"stage":1,"precision":"bf16",`, 1), ""},
		{"bf16 reduce without precision", strings.Replace(good, `"timeout":"60s"`, `"timeout":"60s","reduce_dtype":"bf16"`, 1), "collective.reduce_dtype bf16 needs precision bf16 (precision is fp32"},
		{"bad precision", strings.Replace(good, `"stage":1,`, `"stage":1,"precision":"fp64",`, 1), `precision must be fp32 or bf16, got "fp64"`},
		{"bad reduce_dtype", strings.Replace(good, `"timeout":"60s"`, `"timeout":"60s","reduce_dtype":"int8"`, 1), `collective.reduce_dtype must be fp32 or bf16, got "int8"`},
		{"model config over the limits", strings.Replace(good, `"steps":10`, `"steps":10,"model_config":{"stage":1,"tokenizer":{"width":65536,"merger_blocks":1024,"decoder_blocks":1024}}`, 1), "model tiny-stage1: model config: the model has "},
		{"model config negative", strings.Replace(good, `"steps":10`, `"steps":10,"model_config":{"stage":1,"tokenizer":{"channels":-3}}`, 1), "model tiny-stage1: model config: tokenizer.channels must not be negative (got -3)"},
		{"global_batch over the limit", strings.Replace(good, `"global_batch":4`, `"global_batch":1048577`, 1), "global_batch is 1048577; the limit is 1048576"},
		{"epochs over the limit", strings.Replace(good, `"steps":10`, `"epochs":1048577`, 1), "epochs is 1048577; the limit is 1048576"},
		{"bucket_mb over the limit", strings.Replace(good, `"timeout":"60s"`, `"timeout":"60s","bucket_mb":1e300`, 1), "collective.bucket_mb is 1e+300; the limit is 65536"},
		{"model config not an object", strings.Replace(good, `"steps":10`, `"steps":10,"model_config":[1]`, 1), "model tiny-stage1: want a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Spec
			if err := json.Unmarshal([]byte(tc.json), &s); err != nil {
				t.Fatal(err)
			}
			err := s.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want %q (with no file or line)", err, tc.want)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	cwd := t.TempDir()
	files := map[string]string{
		filepath.Join(cwd, "models/mine.json"):  `{"stage": 1, "tokenizer": {"width": 8}}`,
		filepath.Join(cwd, "models/lm.json"):    `{"stage": 2}`,
		filepath.Join(cwd, "list.json"):         `[1, 2]`,
		filepath.Join(cwd, "nostage.json"):      `{"optim": {}}`,
		filepath.Join(cwd, "badstage.json"):     `{"stage": "one"}`,
		filepath.Join(cwd, "trailing.json"):     `{"stage": 1} {}`,
		filepath.Join(os.TempDir(), "abs.json"): `{"stage": 1}`,
		filepath.Join(cwd, "huge.json"):         `{"stage": 2, "lm": {"d_model": 65537}}`,
		filepath.Join(cwd, "unknownkey.json"):   `{"stage": 1, "tokenizer": {"widht": 8}}`,
	}
	readFile := func(p string) ([]byte, error) {
		if b, ok := files[p]; ok {
			return []byte(b), nil
		}
		return nil, &os.PathError{Op: "open", Path: p, Err: os.ErrNotExist}
	}
	for _, tc := range []struct {
		name  string
		spec  string
		sets  []string
		want  string // error substring; "" for success
		check func(s *Spec) bool
	}{
		{"relative paths", base, []string{"data.eval_url=../eval", "data.manifest=m/manifest.json"}, "", func(s *Spec) bool {
			return s.Data.URL == "file://"+cwd+"/data/train" && s.Data.EvalURL == "file://"+filepath.Dir(cwd)+"/eval" &&
				s.Data.Manifest == "file://"+cwd+"/m/manifest.json" && s.Checkpoint.URL == "file://"+cwd+"/ckpt"
		}},
		{"absolute path and URLs", base, []string{"data.url=/srv/train", "data.eval_url=file:///srv/eval", "checkpoint.url=s3://b/ckpt"}, "", func(s *Spec) bool {
			return s.Data.URL == "file:///srv/train" && s.Data.EvalURL == "file:///srv/eval" && s.Checkpoint.URL == "s3://b/ckpt"
		}},
		{"tokenizer.from run id", base2, nil, "", func(s *Spec) bool { return s.Tokenizer.From == "r-0001" }},
		{"tokenizer.from path", base2, []string{"tokenizer.from=states/final"}, "", func(s *Spec) bool { return s.Tokenizer.From == "file://"+cwd+"/states/final" }},
		{"tokenizer.from URL", base2, []string{"tokenizer.from=s3://b/final"}, "", func(s *Spec) bool { return s.Tokenizer.From == "s3://b/final" }},
		{"init_from paths and URLs", base, []string{"init_from.encoder=weights/eva-clip-g14"}, "", func(s *Spec) bool {
			return s.InitFrom.Encoder == "file://"+cwd+"/weights/eva-clip-g14"
		}},
		{"init_from.lm URL", base2, []string{"init_from.lm=s3://w/llama-2-7b/"}, "", func(s *Spec) bool {
			return s.InitFrom.LM == "s3://w/llama-2-7b/" && slices.Contains(s.Locations(), Location{"init_from.lm", "s3://w/llama-2-7b/"})
		}},
		{"built-in model", base2, nil, "", func(s *Spec) bool {
			var c struct{ Stage int }
			return json.Unmarshal(s.ModelConfig, &c) == nil && c.Stage == 2 && bytes.Contains(s.ModelConfig, []byte(`"vocab":278`))
		}},
		{"model file", base, []string{"model=models/mine.json"}, "", func(s *Spec) bool {
			return string(s.ModelConfig) == `{"stage":1,"tokenizer":{"width":8}}` && s.Model == "models/mine.json"
		}},
		{"absolute model file", base, []string{"model=" + filepath.Join(os.TempDir(), "abs.json")}, "", func(s *Spec) bool { return string(s.ModelConfig) == `{"stage":1}` }},
		{"built-in stage mismatch", base, []string{"model=tiny-stage2"}, "x.yaml: --set model=tiny-stage2: model tiny-stage2 is a stage-2 model, but the spec's stage is 1", nil},
		{"file stage mismatch", base, []string{"model=models/lm.json"}, "model models/lm.json is a stage-2 model, but the spec's stage is 1", nil},
		{"file stage mismatch line", edit(t, base, "model: tiny-stage1", "model: ./models/lm.json"), nil, "x.yaml:2: model ./models/lm.json is a stage-2 model", nil},
		{"unknown built-in", edit(t, base, "model: tiny-stage1", "model: tiny-stage9"), nil, `x.yaml:2: model "tiny-stage9" is not a built-in model (known: stage1-lavit, stage2-llama2-7b, tiny-stage1, tiny-stage2, tiny-stage2-continuous)`, nil},
		{"missing model file", base, []string{"model=nope.json"}, "model nope.json: open " + filepath.Join(cwd, "nope.json") + ": file does not exist", nil},
		{"model not an object", base, []string{"model=list.json"}, "model list.json: want a JSON object", nil},
		{"model without stage", base, []string{"model=nostage.json"}, `model nostage.json: the config has no "stage"`, nil},
		{"model stage not a number", base, []string{"model=badstage.json"}, `model badstage.json: "stage": want an integer, got "one"`, nil},
		{"model dimension over the limit", base2, []string{"model=huge.json"}, "--set model=huge.json: model huge.json: model config: lm.d_model is 65537; the limit is 65536", nil},
		{"model config unknown key", base, []string{"model=unknownkey.json"}, `model unknownkey.json: model config: json: unknown field "widht"`, nil},
		{"model trailing data", base, []string{"model=trailing.json"}, "model trailing.json: want a JSON object", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("x.yaml", []byte(tc.spec), tc.sets)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Resolve(cwd, readFile)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Resolve = %v, want an error containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(s) {
				t.Errorf("unexpected spec: %+v (model_config %s)", s, s.ModelConfig)
			}
		})
	}
	t.Run("relative cwd", func(t *testing.T) {
		s, err := Parse("x.yaml", []byte(base), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Resolve("rel", readFile); err == nil {
			t.Fatal("Resolve with a relative cwd succeeded")
		}
	})
}

func TestTotalSteps(t *testing.T) {
	for _, tc := range []struct {
		steps   int64
		epochs  int
		batch   int
		samples int64
		want    int64
	}{
		{steps: 600, batch: 8, samples: 1000, want: 600},
		{epochs: 2, batch: 8, samples: 64, want: 16},
		{epochs: 2, batch: 8, samples: 65, want: 18}, // a short last batch counts
		{epochs: 3, batch: 10, samples: 1, want: 3},
		{epochs: 1, batch: 8, samples: 0, want: 0},
	} {
		s := Spec{Steps: tc.steps, Epochs: tc.epochs, GlobalBatch: tc.batch}
		if got := s.TotalSteps(tc.samples); got != tc.want {
			t.Errorf("TotalSteps(%d) with steps %d epochs %d batch %d = %d, want %d", tc.samples, tc.steps, tc.epochs, tc.batch, got, tc.want)
		}
	}
}

func TestKeys(t *testing.T) {
	keys := Keys()
	if !slices.IsSorted(keys) {
		t.Errorf("Keys() is not sorted: %v", keys)
	}
	// The keys scripts rely on (configs/README.md and the README).
	for _, k := range []string{"stage", "model", "seed", "steps", "global_batch", "min_workers", "max_workers",
		"data.url", "data.eval_url", "checkpoint.url", "checkpoint.every_steps", "checkpoint.keep", "tokenizer.from"} {
		if !slices.Contains(keys, k) {
			t.Errorf("Keys() lacks the contract key %q", k)
		}
	}
	if slices.Contains(keys, "model_config") || slices.Contains(keys, "data") {
		t.Errorf("Keys() lists a section or model_config: %v", keys)
	}
	// Every key can be set: the error, if any, is about the value.
	for _, k := range keys {
		_, err := Parse("x.yaml", []byte(base), []string{k + "=[x"})
		if err == nil || strings.Contains(err.Error(), "unknown key") {
			t.Errorf("--set %s=[x: %v", k, err)
		}
	}
}

func TestPrecisionOrDefault(t *testing.T) {
	for _, tc := range []struct {
		precision, reduce         string
		wantPrecision, wantReduce string
	}{
		{"", "", "fp32", "fp32"}, // a spec stored before the keys existed
		{"fp32", "fp32", "fp32", "fp32"},
		{"bf16", "", "bf16", "fp32"},
		{"bf16", "bf16", "bf16", "bf16"},
	} {
		s := Spec{Precision: tc.precision, Collective: Collective{ReduceDtype: tc.reduce}}
		if got, gotReduce := s.PrecisionOrDefault(), s.Collective.ReduceDtypeOrDefault(); got != tc.wantPrecision || gotReduce != tc.wantReduce {
			t.Errorf("precision %q, reduce_dtype %q: got %q, %q; want %q, %q", tc.precision, tc.reduce, got, gotReduce, tc.wantPrecision, tc.wantReduce)
		}
	}
}

func TestDefaultManifest(t *testing.T) {
	for _, tc := range []struct {
		d    Data
		want string
	}{
		{Data{URL: "s3://b/train"}, "s3://b/train/manifest.json"},
		{Data{URL: "file:///d/"}, "file:///d/manifest.json"},
		{Data{URL: "s3://b/train", Manifest: "s3://b/other.json"}, "s3://b/other.json"},
	} {
		if got := tc.d.ManifestURL(); got != tc.want {
			t.Errorf("%+v.ManifestURL() = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestIsRunID(t *testing.T) {
	for s, want := range map[string]bool{"r-0001": true, "r-7": true, "r-": false, "r-01a": false, "./r-0001": false, "s3://b/r-0001": false, "run-1": false} {
		if got := IsRunID(s); got != want {
			t.Errorf("IsRunID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestConfigs(t *testing.T) {
	names := configs.ModelNames()
	if want := []string{"stage1-lavit", "stage2-llama2-7b", "tiny-stage1", "tiny-stage2", "tiny-stage2-continuous"}; !slices.Equal(names, want) {
		t.Fatalf("ModelNames() = %v, want %v", names, want)
	}
	for _, n := range names {
		b, err := configs.Model(n)
		var c struct{ Stage int }
		if err != nil || json.Unmarshal(b, &c) != nil || (c.Stage != 1 && c.Stage != 2) {
			t.Errorf("Model(%q): %v, stage %d", n, err, c.Stage)
		}
	}
	for _, bad := range []string{"nope", "../configs", "tiny-stage1.json", ""} {
		if _, err := configs.Model(bad); err == nil || !strings.Contains(err.Error(), "tiny-stage1, tiny-stage2") {
			t.Errorf("Model(%q) = %v, want an error listing the names", bad, err)
		}
	}
	a, err1 := configs.Example("tiny-stage1")
	b, err2 := configs.Example("tiny-stage1.yaml")
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) || len(a) == 0 {
		t.Errorf("Example: %v, %v", err1, err2)
	}
	if _, err := configs.Example("models/tiny-stage1"); err == nil {
		t.Error("Example reached into models/")
	}
}

// TestDefaultGroup: global_batch / max_workers, down to a divisor of
// global_batch; parsed specs get it under bitwise.
func TestDefaultGroup(t *testing.T) {
	for _, tc := range []struct{ batch, workers, want int }{
		{8, 2, 4}, {8, 3, 2}, {8, 8, 1}, {12, 5, 2}, {7, 2, 1}, {64, 1, 64},
	} {
		if got := DefaultGroup(tc.batch, tc.workers); got != tc.want {
			t.Errorf("DefaultGroup(%d, %d) = %d, want %d", tc.batch, tc.workers, got, tc.want)
		}
	}
	s, err := Parse("x.yaml", []byte(base), []string{"determinism=bitwise", "max_workers=3"})
	if err != nil {
		t.Fatal(err)
	}
	if g, ok := s.Bitwise(); !ok || g != 2 {
		t.Fatalf("Bitwise() = %d, %v; want groups of 2", g, ok)
	}
	s, err = Parse("x.yaml", []byte(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Bitwise(); ok || s.Determinism != DeterminismFast {
		t.Fatalf("default determinism %q, want %q", s.Determinism, DeterminismFast)
	}
}
