package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/lavit-org/lavit/checkpoint"
	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/runspec"
	"github.com/lavit-org/lavit/internal/wire"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/synth"
	"github.com/lavit-org/lavit/shards/wds"
	"github.com/lavit-org/lavit/trainer"
)

// The end of a run (rank 0): the final model state goes under
// <checkpoint.url>/<run>/final/ (config.json and state.lvst), the model
// config's evaluation runs on data.eval_url, and the run is reported
// COMPLETED with both.

// Final model states are written under <checkpoint.url>/<run>/final/.
const (
	finalConfigName = "config.json"
	finalStateName  = "state.lvst"
)

// finalDir is where a run's final model state goes.
func finalDir(checkpointURL, run string) string {
	return strings.TrimSuffix(checkpointURL, "/") + "/" + run + "/final"
}

// readFinalState reads a final model state's config and state.
func readFinalState(ctx context.Context, loc string) (config, state []byte, err error) {
	src, err := objstore.Open(ctx, loc)
	if err != nil {
		return nil, nil, err
	}
	if config, err = objstore.ReadObject(ctx, src, finalConfigName); err != nil {
		return nil, nil, err
	}
	if state, err = objstore.ReadObject(ctx, src, finalStateName); err != nil {
		return nil, nil, err
	}
	return config, state, nil
}

// finish saves the final model state, measures the checks on the eval set,
// and reports the run COMPLETED (rank 0).
func (r *training) finish(ctx context.Context, step int64, lastCheckpoint wire.CheckpointInfo) error {
	artifact, err := r.saveFinal(ctx, step, lastCheckpoint)
	if err != nil {
		return fmt.Errorf("save the final model state: %w", err)
	}
	checks, err := r.evaluate(ctx)
	if err != nil {
		return fmt.Errorf("evaluate on data.eval_url: %w", err)
	}
	req := &wire.RunFinishRequest{
		Instance: r.j.Instance, Run: r.j.Desired.Run, Generation: r.j.Desired.Generation, Rank: 0,
		Outcome: wire.RunCompleted, Step: step, Final: artifact, Eval: checks,
	}
	// The report must arrive: retry while the coordinators elect a leader
	// or the call times out; a refusal (stale generation) is final.
	err = retry.Do(ctx, retry.Default, func(int) error {
		cctx, cancel := r.j.callContext(ctx)
		defer cancel()
		_, err := wire.FinishRun.Call(cctx, r.j.Client, req)
		if wire.HasCode(err, wire.CodeStale) || wire.HasCode(err, wire.CodeBadRequest) {
			return retry.Permanent(err)
		}
		return err
	}, func(t retry.Try) {
		r.log.Warn("completion not reported yet; retrying", "retry_in", t.Wait, "err", t.Err)
	})
	if err != nil {
		return fmt.Errorf("report completion: %w", err)
	}
	r.log.Info("run completed", "step", step, "final", artifact.URL)
	return nil
}

// saveFinal writes the model config and state under
// <checkpoint.url>/<run>/final/: the state of the run's last checkpoint
// (as raft committed it: the manifest must be the committed one), fetched
// and verified, since no rank holds all of it.
func (r *training) saveFinal(ctx context.Context, step int64, lastCheckpoint wire.CheckpointInfo) (*wire.Artifact, error) {
	_, state, err := checkpoint.LoadCommitted(ctx, lastCheckpoint.URL, committed(lastCheckpoint))
	if err != nil {
		return nil, fmt.Errorf("read the last checkpoint: %w", err)
	}
	cfg, err := json.Marshal(r.model.Config())
	if err != nil {
		return nil, err
	}
	base := finalDir(r.spec.Checkpoint.URL, r.j.Desired.Run)
	dst, err := objstore.OpenForWrite(ctx, base)
	if err != nil {
		return nil, err
	}
	if err := dst.Put(ctx, finalConfigName, bytes.NewReader(cfg), int64(len(cfg))); err != nil {
		return nil, err
	}
	if err := dst.Put(ctx, finalStateName, bytes.NewReader(state), int64(len(state))); err != nil {
		return nil, err
	}
	return &wire.Artifact{URL: base, Step: step, Bytes: int64(len(state)), SHA256: checkpoint.SHA256(state)}, nil
}

// evaluate runs the evaluation the model config names on data.eval_url:
// none, the synthetic data set's "it learned" checks, or held-out
// measurements on any data set.
func (r *training) evaluate(ctx context.Context) ([]wire.Check, error) {
	url := r.spec.Data.EvalURL
	kind := r.model.Config().Eval
	var checks []trainer.Check
	switch {
	case url == "":
		return nil, nil
	case kind == trainer.EvalHeldOut:
		set, err := loadHeldOutSet(ctx, url, stagePreprocess(r.stage), r.spec.Stage == 1)
		if err != nil {
			return nil, err
		}
		if checks, err = heldOutChecks(r.stage, set); err != nil {
			return nil, err
		}
	case kind == trainer.EvalSynthetic:
		set, err := loadSyntheticEvalSet(ctx, url, stagePreprocess(r.stage))
		if err != nil {
			return nil, err
		}
		if checks, err = r.stage.evaluate(set); err != nil {
			return nil, err
		}
	default:
		r.log.Info("no evaluation: the model config names none (eval)", "eval_url", url)
		return nil, nil
	}
	out := make([]wire.Check, len(checks))
	for i, c := range checks {
		out[i] = wire.Check{Name: c.Name, Value: c.Value, Pass: c.Pass}
	}
	r.log.Info("checks on the eval set\n" + trainer.FormatChecks(fmt.Sprintf("stage %d", r.spec.Stage), checks))
	return out, nil
}

// loadSyntheticEvalSet reads every sample of a synthetic eval data set in
// manifest order: images, captions, and the objects from each sample's
// JSON (the checks need them).
func loadSyntheticEvalSet(ctx context.Context, u string, prep decode.Preprocess) (*trainer.EvalSet, error) {
	set := &trainer.EvalSet{}
	per := 3 * prep.Size * prep.Size
	_, err := readEvalSet(ctx, u, prep, 0, func(samples []wds.Sample, d shards.Decoded) error {
		for i, s := range samples {
			if !d.Valid[i] {
				continue
			}
			var objects []synth.Object
			js, _ := s.Field("json")
			if err := json.Unmarshal(js, &objects); err != nil {
				return fmt.Errorf("eval sample %s in %s: objects (the synthetic checks need the synthetic data set's json): %w", s.Key, s.Shard, err)
			}
			set.Samples = append(set.Samples, synth.Sample{Key: s.Key, Caption: d.Captions[i], Objects: objects})
			set.Images = append(set.Images, d.Images[i*per:(i+1)*per]...)
			set.Positions = append(set.Positions, int64(len(set.Positions)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(set.Samples) == 0 {
		return nil, errors.New("the eval data set has no usable samples")
	}
	return set, nil
}

// fetchSpec reads the run's spec from the coordinator.
func fetchSpec(ctx context.Context, j *Job, run string) (*runspec.Spec, error) {
	info, err := j.showRun(ctx, run)
	if err != nil {
		return nil, err
	}
	var spec runspec.Spec
	if err := json.Unmarshal(info.Spec, &spec); err != nil {
		return nil, fmt.Errorf("run %s: spec: %w", run, err)
	}
	return &spec, nil
}
