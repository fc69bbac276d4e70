// Package runspec owns the run spec: the YAML file given to
// `lavit-coord run submit -f FILE [--set key=value …]` and the JSON the
// coordinator stores for each run.
//
// A spec is one YAML mapping with snake_case keys; sections nest one level
// (data.url, optim.lr, checkpoint.every_steps, …; Keys lists them all):
//
//	stage: 1                  # 1 (tokenizer) or 2 (language model)
//	model: tiny-stage1        # built-in model, or a path to a JSON model config
//	steps: 600                # or epochs; exactly one
//	global_batch: 8
//	min_workers: 1
//	max_workers: 2
//	data:
//	  url: ./demo-out/data/train
//	checkpoint:
//	  url: ./demo-out/checkpoints
//	  every_steps: 200
//	init_from:                # optional released weights, per module
//	  encoder: s3://weights/eva-clip-g14/   # stage 1: EVA-CLIP ViT (frozen encoder)
//	  # lm: file:///w/llama-2-7b/           # stage 2: Llama-2, Hugging Face format
//
// Parsing is strict: unknown keys, duplicate keys, wrong types and
// impossible values are errors that name the file, the dotted field and the
// line (or the --set that gave the value). Keys left out take documented
// defaults (the Default* constants). Where a URL goes (data.url,
// data.manifest, data.eval_url, checkpoint.url, tokenizer.from,
// init_from.encoder, init_from.lm) a spec
// file may give a plain local path; Resolve, run by the CLI at submit
// time, turns those into file:///abs URLs against the working directory
// and inlines the model config, so the stored spec is self-contained and
// means the same on every machine. tokenizer.from is a run id when it
// looks like one (r-0001, see IsRunID), a URL when it has "://", and a
// local path otherwise.
//
// Every number is bounded (the Max* constants: global_batch ≤ 2^20,
// epochs ≤ 2^20, steps ≤ 2^40, workers ≤ 2^16, …; floats finite), every
// URL and path is at most MaxPathLen bytes without control characters,
// and the inlined model config must pass modelcfg.ParseConfig, with its
// own limits on dimensions and parameter counts. Single fields and the
// parameter counts cannot overflow; products of several limits can (the
// memory plan's activations), so internal/memplan computes in float64 and
// treats an overflow as "does not fit".
// FuzzParse (YAML and --set) and FuzzValidateJSON (a submitted spec) hold
// Parse and Validate to that: no panics, and a spec that validates comes
// back the same through YAML and JSON.
//
// This package is pure Go: the cgo-free coordinator uses it.
package runspec
