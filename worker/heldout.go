package worker

import (
	"context"
	"fmt"

	"github.com/lavit-org/lavit/internal/objstore"
	"github.com/lavit-org/lavit/shards"
	"github.com/lavit-org/lavit/shards/decode"
	"github.com/lavit-org/lavit/shards/stream"
	"github.com/lavit-org/lavit/shards/wds"
	"github.com/lavit-org/lavit/trainer"
)

// MaxHeldOutSamples bounds the samples a held-out evaluation reads (the
// first ones in manifest order).
const MaxHeldOutSamples = 4096

// heldOutSet is a held-out data set as model inputs: its valid samples
// in manifest order.
type heldOutSet struct {
	decoded   shards.Decoded // valid samples only
	positions []int64
	skipped   int // bad samples (or text-only ones, for stage 1)
}

// loadHeldOutSet reads and decodes the first MaxHeldOutSamples samples of
// any data set (a manifest of image/caption shards, text-only samples
// allowed unless imagesOnly), keeping the valid ones.
func loadHeldOutSet(ctx context.Context, u string, prep decode.Preprocess, imagesOnly bool) (*heldOutSet, error) {
	set := &heldOutSet{}
	per := 3 * prep.Size * prep.Size
	read, err := readEvalSet(ctx, u, prep, MaxHeldOutSamples, func(samples []wds.Sample, d shards.Decoded) error {
		if imagesOnly {
			d.MaskTextOnly()
		}
		for i := range samples {
			if !d.Valid[i] {
				set.skipped++
				continue
			}
			set.decoded.Images = append(set.decoded.Images, d.Images[i*per:(i+1)*per]...)
			set.decoded.Captions = append(set.decoded.Captions, d.Captions[i])
			set.decoded.TextOnly = append(set.decoded.TextOnly, d.TextOnly[i])
			set.decoded.Valid = append(set.decoded.Valid, true)
			set.positions = append(set.positions, int64(len(set.positions)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(set.positions) == 0 {
		return nil, fmt.Errorf("the eval data set has no usable samples (%d read, all bad)", read)
	}
	return set, nil
}

// readEvalSet reads an eval data set's samples in manifest order, at most
// limit of them (0: all), and hands each shard's samples, decoded with
// prep, to use. It returns how many samples it read.
func readEvalSet(ctx context.Context, u string, prep decode.Preprocess, limit int, use func([]wds.Sample, shards.Decoded) error) (int, error) {
	src, err := objstore.Open(ctx, u)
	if err != nil {
		return 0, err
	}
	m, err := shards.LoadManifest(ctx, src)
	if err != nil {
		return 0, err
	}
	l := shards.NewLoader(src, m, 0)
	read := 0
	for si, e := range m.Shards {
		if limit > 0 && read >= limit {
			break
		}
		n := int(e.Samples)
		if limit > 0 {
			n = min(n, limit-read)
		}
		refs := make([]stream.Ref, n)
		for i := range refs {
			refs[i] = stream.Ref{Shard: si, Index: i}
		}
		read += n
		samples, err := l.Samples(ctx, refs)
		if err != nil {
			return read, err
		}
		if err := use(samples, shards.DecodeBatchWith(samples, prep, 0)); err != nil {
			return read, err
		}
	}
	return read, nil
}

// heldOutChecks measures the trained model of stage st on set: the
// visual tokenizer's reconstruction, keep ratio and code use (stage 1),
// the LM's loss and perplexity (stage 2).
func heldOutChecks(st stage, set *heldOutSet) ([]trainer.Check, error) {
	var checks []trainer.Check
	switch s := st.(type) {
	case *stage1:
		r, err := trainer.HeldOutStage1(s.model, set.decoded.Images, set.positions)
		if err != nil {
			return nil, err
		}
		checks = r.Checks()
	case *stage2:
		rows := trainer.HeldOutRows(s.lm)
		per := len(set.decoded.Images) / len(set.positions)
		var batches []*trainer.Batch
		for from := 0; from < len(set.positions); from += rows {
			to := min(from+rows, len(set.positions))
			d := shards.Decoded{Images: set.decoded.Images[from*per : to*per], Captions: set.decoded.Captions[from:to],
				Valid: set.decoded.Valid[from:to], TextOnly: set.decoded.TextOnly[from:to]}
			b, err := s.batch(0, int64(to-from), set.positions[from:to], d, nil)
			if err != nil {
				return nil, fmt.Errorf("held-out rows %d..%d: %w", from, to-1, err)
			}
			batches = append(batches, b)
		}
		r, err := trainer.HeldOutStage2(s.lm, batches)
		if err != nil {
			return nil, err
		}
		checks = r.Checks()
	default:
		return nil, fmt.Errorf("held-out evaluation: unknown stage %T", st)
	}
	if set.skipped > 0 {
		checks = append(checks, trainer.Check{Name: "held-out samples skipped: bad, or text-only for stage 1 (reported)", Value: fmt.Sprintf("%d", set.skipped), Pass: true})
	}
	return checks, nil
}
